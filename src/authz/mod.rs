//! Layer 4 — authorization: RBAC and the route table.
//!
//! Threat: a route that forgets its permission check, a key or token that
//! carries more than its user may do, and existence oracles across tenants.
//! Guarantee: every route is registered through [`Routes::route`] with an
//! explicit [`Access`]; the check runs as a route layer before the handler
//! (and so before any resource is looked up): no principal -> 401, lacking the
//! permission -> 403. `admin` implies every permission. Handlers enforce
//! tenancy by answering 404 for another user's resources.
//!
//! Not covered: tenancy itself lives in the handlers' queries (owner filters).

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use http::Method;
use serde::{Deserialize, Serialize};

use crate::authn::Authenticated;
use crate::config::RoleConfig;
use crate::http::ApiError;

/// The six permissions of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "read:tasks")]
    ReadTasks,
    #[serde(rename = "write:tasks")]
    WriteTasks,
    #[serde(rename = "delete:tasks")]
    DeleteTasks,
    #[serde(rename = "read:agent")]
    ReadAgent,
    #[serde(rename = "write:agent")]
    WriteAgent,
    #[serde(rename = "admin")]
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Permission::ReadTasks,
        Permission::WriteTasks,
        Permission::DeleteTasks,
        Permission::ReadAgent,
        Permission::WriteAgent,
        Permission::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ReadTasks => "read:tasks",
            Permission::WriteTasks => "write:tasks",
            Permission::DeleteTasks => "delete:tasks",
            Permission::ReadAgent => "read:agent",
            Permission::WriteAgent => "write:agent",
            Permission::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of permissions (a bit set: checks are one AND).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct PermissionSet(u8);

impl PermissionSet {
    pub const EMPTY: PermissionSet = PermissionSet(0);

    pub fn of(perms: &[Permission]) -> Self {
        PermissionSet(perms.iter().fold(0, |acc, p| acc | p.bit()))
    }

    /// Parse permission names; `Err(name)` names the first unknown one.
    pub fn parse<'a, I: IntoIterator<Item = &'a str>>(names: I) -> Result<Self, String> {
        let mut set = PermissionSet::EMPTY;
        for n in names {
            match Permission::parse(n) {
                Some(p) => set.insert(p),
                None => return Err(n.to_string()),
            }
        }
        Ok(set)
    }

    pub fn insert(&mut self, p: Permission) {
        self.0 |= p.bit();
    }

    pub fn union(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 | other.0)
    }

    /// The RBAC decision: does this set grant `p`? `admin` implies all.
    pub fn allows(self, p: Permission) -> bool {
        self.0 & (p.bit() | Permission::Admin.bit()) != 0
    }

    /// Is every permission of `other` granted by `self`?
    pub fn covers(self, other: PermissionSet) -> bool {
        Permission::ALL
            .into_iter()
            .filter(|p| other.0 & p.bit() != 0)
            .all(|p| self.allows(p))
    }

    /// The permissions actually granted by both (for a key: never more than
    /// its owner's).
    pub fn intersect(self, owner: PermissionSet) -> PermissionSet {
        if owner.allows(Permission::Admin) {
            return self;
        }
        if self.allows(Permission::Admin) {
            return owner;
        }
        PermissionSet(self.0 & owner.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.0 & p.bit() != 0)
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Permission::as_str).collect()
    }
}

/// The names of the built-in roles, which a configured role may not reuse.
pub const BUILTIN_ROLES: [&str; 4] = ["admin", "user", "readonly", "agent"];

/// Built-in and configured roles.
#[derive(Debug, Clone)]
pub struct Roles {
    map: BTreeMap<String, PermissionSet>,
}

impl Roles {
    /// The four built-in roles plus the configured ones (which may not
    /// redefine a built-in).
    pub fn new(custom: &BTreeMap<String, RoleConfig>) -> Roles {
        use Permission::*;
        let mut map = BTreeMap::new();
        map.insert("admin".to_string(), PermissionSet::of(&[Admin]));
        map.insert(
            "user".to_string(),
            PermissionSet::of(&[ReadTasks, WriteTasks]),
        );
        map.insert("readonly".to_string(), PermissionSet::of(&[ReadTasks]));
        map.insert(
            "agent".to_string(),
            PermissionSet::of(&[ReadTasks, ReadAgent, WriteAgent]),
        );
        for (name, role) in custom {
            if map.contains_key(name) {
                continue;
            }
            let set = PermissionSet::parse(role.permissions.iter().map(String::as_str))
                .unwrap_or_default();
            map.insert(name.clone(), set);
        }
        Roles { map }
    }

    pub fn get(&self, name: &str) -> Option<PermissionSet> {
        self.map.get(name).copied()
    }

    /// The union of the permissions of these roles (unknown roles grant nothing).
    pub fn permissions<'a, I: IntoIterator<Item = &'a str>>(&self, roles: I) -> PermissionSet {
        roles
            .into_iter()
            .filter_map(|r| self.get(r))
            .fold(PermissionSet::EMPTY, PermissionSet::union)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, OpenAPI, login).
    Public,
    /// Any authenticated principal.
    Authenticated,
    /// A principal whose permissions allow this one.
    Permission(Permission),
}

impl Access {
    pub fn describe(self) -> &'static str {
        match self {
            Access::Public => "none",
            Access::Authenticated => "any authenticated caller",
            Access::Permission(p) => p.as_str(),
        }
    }
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// What the OpenAPI description says beyond access and summary.
    pub doc: RouteDoc,
}

/// A JSON Schema, built from the effective config (validation rules can be
/// tightened there).
pub type SchemaFn = fn(&crate::config::Config) -> serde_json::Value;

/// The OpenAPI facts of a route that the table cannot infer: its body,
/// query parameters, success responses and route-specific errors. Path
/// parameters come from the `{name}` segments and the errors every route of
/// its kind can give from the path, method and access (see `app::openapi`).
/// Declared next to the route with [`Routes::doc`].
#[derive(Debug, Clone, Default)]
pub struct RouteDoc {
    /// JSON Schema of the (required) JSON request body; `None`: no body.
    pub body: Option<SchemaFn>,
    /// Query parameters: name, JSON Schema, description.
    pub query: Vec<(&'static str, SchemaFn, &'static str)>,
    /// Success responses: status, description, JSON Schema of the body
    /// (`None`: no body).
    pub ok: Vec<(u16, &'static str, Option<SchemaFn>)>,
    /// Errors this route gives beyond the common ones (404, 409, 503, ...).
    pub errors: Vec<(u16, &'static str)>,
}

impl RouteDoc {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn body(mut self, schema: SchemaFn) -> Self {
        self.body = Some(schema);
        self
    }
    pub fn query(
        mut self,
        name: &'static str,
        schema: SchemaFn,
        description: &'static str,
    ) -> Self {
        self.query.push((name, schema, description));
        self
    }
    pub fn ok(mut self, status: u16, description: &'static str, schema: SchemaFn) -> Self {
        self.ok.push((status, description, Some(schema)));
        self
    }
    pub fn empty(mut self, status: u16, description: &'static str) -> Self {
        self.ok.push((status, description, None));
        self
    }
    pub fn error(mut self, status: u16, description: &'static str) -> Self {
        self.errors.push((status, description));
        self
    }
}

/// A router that only accepts routes with a declared [`Access`], and keeps
/// the table of them (for the OpenAPI description and the tests).
pub struct Routes<S> {
    router: Router<S>,
    table: Vec<RouteSpec>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    /// Register `handler` for `method path`, guarded by `access`.
    pub fn route<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        summary: &'static str,
        handler: H,
    ) -> Self
    where
        H: axum::handler::Handler<T, S>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        let mr = on(filter, handler).route_layer(axum::middleware::from_fn(move |req, next| {
            require(access, req, next)
        }));
        self.router = self.router.route(path, mr);
        self.table.push(RouteSpec {
            method,
            path,
            access,
            summary,
            doc: RouteDoc::default(),
        });
        self
    }

    /// Describe the route registered last (for the OpenAPI description).
    pub fn doc(mut self, doc: RouteDoc) -> Self {
        if let Some(last) = self.table.last_mut() {
            last.doc = doc;
        }
        self
    }

    /// Register `handler` for every method on everything under `prefix`
    /// (gateway routes, whose prefixes come from the configuration):
    /// `{base}/` and `{base}/{*rest}`, plus `{base}` itself when the prefix
    /// has no trailing `/` — the rule of `gateway::covers`. Guarded by
    /// `access` like [`Routes::route`]. Not part of the API's own table (the
    /// OpenAPI description covers Frenly's routes, not the upstream's).
    pub fn route_prefix<H, T>(mut self, prefix: &str, access: Access, handler: H) -> Self
    where
        H: axum::handler::Handler<T, S>,
        T: 'static,
    {
        let base = prefix.trim_end_matches('/');
        let guarded = || {
            // `any` has no per-method routes for `route_layer` to wrap: the
            // check wraps the whole method router (every method) instead.
            axum::routing::any(handler.clone()).layer(axum::middleware::from_fn(
                move |req, next| require(access, req, next),
            ))
        };
        if !prefix.ends_with('/') {
            self.router = self.router.route(base, guarded());
        }
        self.router = self.router.route(&format!("{base}/"), guarded());
        self.router = self.router.route(&format!("{base}/{{*rest}}"), guarded());
        self
    }

    /// Add another set of routes.
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    pub fn into_parts(self) -> (Router<S>, Vec<RouteSpec>) {
        (self.router, self.table)
    }
}

/// The per-route check.
async fn require(access: Access, req: Request, next: Next) -> Response {
    match decide(access, req.extensions().get::<Authenticated>()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The RBAC decision for a route.
pub fn decide(access: Access, who: Option<&Authenticated>) -> Result<(), ApiError> {
    match (access, who) {
        (Access::Public, _) => Ok(()),
        (_, None) => Err(ApiError::Unauthenticated),
        (Access::Authenticated, Some(_)) => Ok(()),
        (Access::Permission(p), Some(a)) if a.permissions.allows(p) => Ok(()),
        (Access::Permission(_), Some(_)) => Err(ApiError::Forbidden),
    }
}

#[cfg(test)]
mod tests;
