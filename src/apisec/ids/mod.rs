//! Intrusion detection: injection payloads in the request's structure.
//!
//! Threat: SQL injection, cross-site scripting, path traversal, command
//! injection and the other families of the OWASP CRS tests (PHP, Java,
//! Node.js, remote file inclusion, SSRF, template injection, session
//! fixation) hidden anywhere an application might interpret them.
//!
//! Guarantee: every part of a request that is structure — path segments,
//! query parameter names and values, cookies, header values (except the
//! credentials headers), JSON keys at every depth, JSON string values that
//! are not free text, form, multipart and XML values — is decoded (see
//! [`decode`]) and checked by the rules of every family that is not `off`
//! for the route. A match in a `block` family refuses the request (403
//! `request_blocked`, naming the family and the request id, never the
//! payload); a match in a `detect` family is only logged and counted.
//! JSON nested deeper than [`MAX_JSON_DEPTH`] levels is refused (400)
//! without recursion that could overflow the stack.
//!
//! Not covered: free-text fields (a task's `title`, `description`, `input`,
//! `result`; the fields a gateway route declares) are data that Frenly never
//! interprets, so their content is never inspected; encodings other than the
//! ones [`decode`] undoes; attacks that are valid-looking values (an ID that
//! belongs to someone else is authorisation's job). A rule set is a
//! heuristic: `docs/IDS.md` lists what it misses and what it blocks wrongly.

pub mod decode;
pub mod eval;
mod headers;
mod memo;
pub mod rules;
pub mod sqli;
mod walk;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{GatewayRoute, IdsConfig, IdsMode};

pub use rules::Kind;

/// serde_json's own nesting limit; deeper JSON is refused with 400.
pub const MAX_JSON_DEPTH: usize = 128;

/// Rule families.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum Family {
    Sqli,
    Xss,
    Lfi,
    Rce,
    Rfi,
    Php,
    Java,
    Nodejs,
    Session,
    Generic,
}

impl Family {
    pub const ALL: [Family; 10] = [
        Family::Sqli,
        Family::Xss,
        Family::Lfi,
        Family::Rce,
        Family::Rfi,
        Family::Php,
        Family::Java,
        Family::Nodejs,
        Family::Session,
        Family::Generic,
    ];

    /// The name used in config, responses, audit events and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sqli => "sqli",
            Family::Xss => "xss",
            Family::Lfi => "lfi",
            Family::Rce => "rce",
            Family::Rfi => "rfi",
            Family::Php => "php",
            Family::Java => "java",
            Family::Nodejs => "nodejs",
            Family::Session => "session",
            Family::Generic => "generic",
        }
    }

    pub fn parse(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == s)
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// One rule match: family, rule id and where (never the matched text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub family: Family,
    pub rule: &'static str,
    /// `query:id`, `header:user-agent`, `json:items[].name`, `path`...
    pub location: String,
}

/// The outcome of inspecting one request.
#[derive(Debug, Default)]
pub struct Verdict {
    /// The first match in a `block` family: the request is refused.
    pub block: Option<Hit>,
    /// Matches in `detect` families (at most one per family).
    pub detected: Vec<Hit>,
}

impl Verdict {
    /// Nothing matched (nothing to block, audit or count).
    pub fn is_clean(&self) -> bool {
        self.block.is_none() && self.detected.is_empty()
    }
}

/// Inspection refused the request outright.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdsError {
    #[error("JSON nesting is deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
}

impl From<IdsError> for crate::http::ApiError {
    fn from(e: IdsError) -> Self {
        crate::http::ApiError::BadRequest(e.to_string())
    }
}

/// What the detector sees of a request: the same view for the live layer
/// and for `ids-eval`, so both decode identically.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Request target as sent: path and raw query.
    pub target: &'a str,
    /// Header names (any case) and raw values, in order.
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub body: &'a [u8],
}

impl<'a> RequestView<'a> {
    /// The view of a live request.
    pub fn from_parts(parts: &'a http::request::Parts, body: &'a [u8]) -> RequestView<'a> {
        RequestView {
            method: parts.method.as_str(),
            target: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or_else(|| parts.uri.path()),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect(),
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// One segment of a JSON field pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PatSeg {
    Key(String),
    AnyIndex,
}

/// A set of JSON field paths (`a.b`, `items[].c`); a matching field's whole
/// subtree is covered — or, for a path ending in `:string`
/// (`messages[].content:string`), the field only when it is a string (an
/// array or object there is walked as structure).
#[derive(Clone, Debug, Default)]
pub struct FieldSet(Vec<(Vec<PatSeg>, bool)>);

/// The suffix that limits a field path to string values.
const STRING_ONLY: &str = ":string";

/// A step of the path to a JSON value.
#[derive(Clone, Debug)]
pub(crate) enum PathSeg {
    Key(String),
    Index,
}

impl FieldSet {
    /// Parse field paths such as `messages[].content` or `prompt`.
    pub fn new<S: AsRef<str>>(paths: &[S]) -> FieldSet {
        let mut out = Vec::new();
        for p in paths {
            let p = p.as_ref().trim();
            let (p, strings_only) = match p.strip_suffix(STRING_ONLY) {
                Some(p) => (p, true),
                None => (p, false),
            };
            if p.is_empty() || p.contains(':') {
                continue;
            }
            let mut segs = Vec::new();
            for part in p.split('.') {
                let mut name = part;
                let mut idx = 0;
                while let Some(n) = name.strip_suffix("[]") {
                    name = n;
                    idx += 1;
                }
                if !name.is_empty() {
                    segs.push(PatSeg::Key(name.to_string()));
                }
                segs.extend(std::iter::repeat_n(PatSeg::AnyIndex, idx));
            }
            if !segs.is_empty() {
                out.push((segs, strings_only));
            }
        }
        FieldSet(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Is the whole value at `path` covered?
    pub(crate) fn covers(&self, path: &[PathSeg]) -> bool {
        self.0
            .iter()
            .any(|(pat, strings_only)| !strings_only && matches(pat, path))
    }

    /// Is the value at `path` covered when it is a string (`:string`)?
    pub(crate) fn covers_string(&self, path: &[PathSeg]) -> bool {
        self.0
            .iter()
            .any(|(pat, strings_only)| *strings_only && matches(pat, path))
    }
}

fn matches(pat: &[PatSeg], path: &[PathSeg]) -> bool {
    pat.len() == path.len()
        && pat.iter().zip(path).all(|(p, s)| match (p, s) {
            (PatSeg::Key(a), PathSeg::Key(b)) => a == b,
            (PatSeg::AnyIndex, PathSeg::Index) => true,
            _ => false,
        })
}

/// The free-text fields of a gateway route (its `free_text` paths).
pub fn free_text_fields(paths: &[String]) -> FieldSet {
    FieldSet::new(paths)
}

/// Frenly's own free-text fields, by route prefix: data that is stored or
/// hashed, never interpreted.
pub fn default_free_text() -> Vec<(String, FieldSet)> {
    vec![
        (
            "/api/tasks".into(),
            FieldSet::new(&["title", "description", "input", "result"]),
        ),
        ("/api/auth/login".into(), FieldSet::new(&["password"])),
        ("/api/users".into(), FieldSet::new(&["password"])),
        ("/api/security/bans".into(), FieldSet::new(&["reason"])),
    ]
}

struct RoutePolicy {
    prefix: String,
    mode: Option<IdsMode>,
    families: [Option<IdsMode>; 10],
    exclude: FieldSet,
    /// `query:NAME`, `header:NAME`, `cookie:NAME`, `form:NAME` exclusions.
    exclude_named: Vec<String>,
}

/// The detector with its configuration.
pub struct Ids {
    mode: IdsMode,
    families: [Option<IdsMode>; 10],
    routes: Vec<RoutePolicy>,
    /// Route prefix, its free-text fields, and whether the route is
    /// Frenly's own (its handlers take only well-formed JSON) rather than
    /// a gateway route (whose upstream may read a malformed body).
    free_text: Vec<(String, FieldSet, bool)>,
    credential_headers: Vec<String>,
    inspect_window: usize,
    prefilter: bool,
    memo: Option<Arc<memo::Memo>>,
}

// Arrays of the 10 families indexed by `Family::idx()` (always < 10).
#[allow(clippy::indexing_slicing)]
fn family_modes(map: &BTreeMap<String, IdsMode>, ctx: &str) -> [Option<IdsMode>; 10] {
    let mut out = [None; 10];
    for (name, mode) in map {
        match Family::parse(name) {
            Some(f) => out[f.idx()] = Some(*mode),
            None => tracing::warn!(family = %name, "{ctx}: unknown IDS rule family ignored"),
        }
    }
    out
}

/// Does `path` fall under `prefix` (`/api/tasks` covers `/api/tasks` and
/// `/api/tasks/x`, not `/api/tasksx`)?
fn under(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len()
            || prefix.ends_with('/')
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl Ids {
    /// Build from `ids.*`, the API-key header name and the gateway routes'
    /// free-text declarations.
    pub fn new(cfg: &IdsConfig, api_key_header: &str, gateway: &[GatewayRoute]) -> Ids {
        let mut routes: Vec<RoutePolicy> = cfg
            .routes
            .iter()
            .map(|(prefix, r)| {
                let (named, json): (Vec<String>, Vec<String>) = r
                    .exclude_fields
                    .iter()
                    .cloned()
                    .partition(|f| f.contains(':'));
                RoutePolicy {
                    prefix: prefix.clone(),
                    mode: r.mode,
                    families: family_modes(&r.families, &format!("ids.routes.{prefix}")),
                    exclude: FieldSet::new(&json),
                    exclude_named: named.into_iter().map(|s| s.to_ascii_lowercase()).collect(),
                }
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut free_text: Vec<(String, FieldSet, bool)> = default_free_text()
            .into_iter()
            .map(|(p, f)| (p, f, true))
            .collect();
        for g in gateway {
            free_text.push((g.prefix.clone(), free_text_fields(&g.free_text), false));
        }
        free_text.sort_by_key(|f| std::cmp::Reverse(f.0.len()));
        rules::warm_up();
        Ids {
            mode: cfg.mode,
            families: family_modes(&cfg.families, "ids.families"),
            routes,
            free_text,
            credential_headers: vec![
                "authorization".into(),
                "proxy-authorization".into(),
                api_key_header.to_ascii_lowercase(),
            ],
            inspect_window: cfg.inspect_window_bytes.max(1024),
            prefilter: true,
            memo: Some(Arc::default()),
        }
    }

    /// Turn the clean-value shortcut off (the eval uses this to prove the
    /// shortcut never changes a verdict).
    pub fn set_prefilter(&mut self, on: bool) {
        self.prefilter = on;
    }

    /// Turn the clean-value memo off (the eval runs a detector without it
    /// to prove the memo never changes a verdict).
    pub fn set_memo(&mut self, on: bool) {
        self.memo = on.then(Arc::default);
    }

    fn route(&self, path: &str) -> Option<&RoutePolicy> {
        self.routes.iter().find(|r| under(path, &r.prefix))
    }

    /// The effective mode of every family on `path`: the route's family
    /// override, else the route's mode, else the global family override,
    /// else `ids.mode`.
    // Arrays of the 10 families indexed by `Family::idx()` (always < 10).
    #[allow(clippy::indexing_slicing)]
    pub fn modes_for(&self, path: &str) -> [IdsMode; 10] {
        let route = self.route(path);
        let mut out = [self.mode; 10];
        for f in Family::ALL {
            let i = f.idx();
            out[i] = route
                .and_then(|r| r.families[i].or(r.mode))
                .or(self.families[i])
                .unwrap_or(self.mode);
        }
        out
    }

    /// Bytes of a streamed (gateway) body that are inspected.
    pub fn inspect_window(&self) -> usize {
        self.inspect_window
    }

    /// Is any family switched on for this path? (When not, the layer does
    /// not even buffer the body.)
    pub fn active_for(&self, path: &str) -> bool {
        self.modes_for(path).iter().any(|m| *m != IdsMode::Off)
    }

    /// The free-text fields of the route `path` belongs to.
    pub fn free_text_for(&self, path: &str) -> Option<&FieldSet> {
        self.free_text
            .iter()
            .find(|(p, _, _)| under(path, p))
            .map(|(_, f, _)| f)
    }

    /// Is `path` one of Frenly's own routes with free-text fields (not a
    /// gateway route)? Their handlers refuse a body that is not one
    /// well-formed JSON document (400) before reading any of it.
    fn own_free_text_route(&self, path: &str) -> bool {
        self.free_text
            .iter()
            .find(|(p, _, _)| under(path, p))
            .is_some_and(|(_, f, own)| *own && !f.is_empty())
    }

    /// Inspect a request.
    pub fn inspect(&self, req: &RequestView<'_>) -> Result<Verdict, IdsError> {
        self.inspect_routed(req, None)
    }

    /// Inspect a request that the router matched to `route` (a pattern such
    /// as `/api/tasks/{id}`): the literal segments of the pattern are
    /// Frenly's own (`/api/auth/whoami` is not a shell command), so only the
    /// segments that fill a `{param}` are inspected as path values. An
    /// unmatched request (`None`) has its whole path inspected.
    pub fn inspect_routed(
        &self,
        req: &RequestView<'_>,
        route: Option<&str>,
    ) -> Result<Verdict, IdsError> {
        self.inspect_window_of(req, route, false)
    }

    /// [`Ids::inspect_routed`] for a request whose `body` is the inspection
    /// window of a streamed body that goes on past it (`truncated`): a JSON
    /// window is then walked as a prefix of the document (`walk::json`), so
    /// free-text fields stay free text however long the body is.
    pub fn inspect_window_of(
        &self,
        req: &RequestView<'_>,
        route: Option<&str>,
        truncated: bool,
    ) -> Result<Verdict, IdsError> {
        let (raw_path, query) = match req.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.target, None),
        };
        let dynamic;
        let scanned_path = match route {
            Some(pattern) => {
                dynamic = dynamic_segments(pattern, raw_path);
                dynamic.as_str()
            }
            None => raw_path,
        };
        let modes = self.modes_for(raw_path);
        let mut scan = Scan {
            modes,
            prefilter: self.prefilter,
            // remember clean values only when every family runs, so that a
            // remembered value is clean under any configuration
            memo: self
                .memo
                .as_ref()
                .filter(|_| modes.iter().all(|m| *m != IdsMode::Off))
                .cloned(),
            hits: 0,
            verdict: Verdict::default(),
        };
        if modes.iter().all(|m| *m == IdsMode::Off) {
            return Ok(scan.verdict);
        }
        let route = self.route(raw_path);
        let excluded = |what: &str, name: &str| {
            route.is_some_and(|r| {
                r.exclude_named
                    .iter()
                    .any(|e| e.split_once(':') == Some((what, &name.to_ascii_lowercase())))
            })
        };

        // The path: the whole of it for traversal, each segment as a value.
        scan.path(scanned_path);
        if scan.done() {
            return Ok(scan.verdict);
        }
        if let Some(q) = query {
            scan.pairs(q, "query", &excluded);
            if scan.done() {
                return Ok(scan.verdict);
            }
        }
        for (name, value) in &req.headers {
            let lname = name.to_ascii_lowercase();
            if self.credential_headers.contains(&lname) || excluded("header", &lname) {
                continue;
            }
            let value = String::from_utf8_lossy(value);
            if lname == "cookie" {
                scan.cookies(&value, &excluded);
            } else {
                scan.header(&lname, &value);
            }
            if scan.done() {
                return Ok(scan.verdict);
            }
        }
        if !req.body.is_empty() {
            // case kept: a multipart boundary is case-sensitive
            // (`----WebKitFormBoundary7MA4YWxkTrZu0gW`)
            let ctype = req
                .header("content-type")
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let free = self.free_text_for(raw_path);
            let exclude = route.map(|r| &r.exclude);
            let body = Body {
                ctype: &ctype,
                bytes: req.body,
                free,
                exclude,
                own_json: self.own_free_text_route(raw_path),
                truncated,
            };
            self.body(&mut scan, &body, &excluded)?;
        }
        Ok(scan.verdict)
    }

    fn body(
        &self,
        scan: &mut Scan,
        b: &Body<'_>,
        excluded: &dyn Fn(&str, &str) -> bool,
    ) -> Result<(), IdsError> {
        let (ctype, body, free, exclude) = (b.ctype, b.bytes, b.free, b.exclude);
        let lower = ctype.to_ascii_lowercase();
        let mime = lower.split(';').next().unwrap_or("").trim();
        let trimmed = body
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .and_then(|i| body.get(i..));
        let looks_json = looks_like_json(body);
        let is_json = mime == "application/json" || mime.ends_with("+json");
        if is_json || (looks_json && !mime.contains("form") && !mime.contains("xml")) {
            match walk::json(scan, body, free, exclude, b.truncated) {
                Ok(true) => return Ok(()),
                Err(e) if is_json => return Err(e),
                // malformed on one of Frenly's own JSON routes (`NaN`, a
                // BOM, a trailing comma): the handler answers 400 without
                // reading it, and inspecting it whole would judge its free
                // text as structure (a task description holding code)
                Ok(false) if b.own_json => return Ok(()),
                // malformed (text after the document, a broken one) or too
                // deep for a body not declared JSON: inspected whole below
                Ok(false) | Err(_) => {
                    if scan.done() {
                        return Ok(());
                    }
                }
            }
        }
        let window = body.get(..self.inspect_window).unwrap_or(body);
        let text = String::from_utf8_lossy(window);
        if mime == "multipart/form-data" {
            let boundary = multipart_boundary(ctype);
            // a body its boundary does not split is inspected whole below
            if let Some(b) = boundary {
                if scan.multipart(&text, &b) {
                    return Ok(());
                }
            }
        }
        let looks_xml = trimmed.is_some_and(|t| t.starts_with(b"<?xml") || t.starts_with(b"<"));
        if mime.ends_with("xml") || (looks_xml && !mime.contains("form")) {
            scan.xml(&text);
        } else if mime.is_empty() || mime == "application/x-www-form-urlencoded" {
            scan.pairs(&text, "form", excluded);
        } else {
            scan.value(Kind::Value, "body", &text, false);
        }
        Ok(())
    }
}

/// A request body and what the route says about it.
struct Body<'a> {
    /// The Content-Type as sent (case kept).
    ctype: &'a str,
    bytes: &'a [u8],
    free: Option<&'a FieldSet>,
    exclude: Option<&'a FieldSet>,
    /// One of Frenly's own routes with free-text fields.
    own_json: bool,
    /// The inspection window of a body that goes on past it.
    truncated: bool,
}

/// Per-request scanning state.
pub(crate) struct Scan {
    modes: [IdsMode; 10],
    prefilter: bool,
    /// Present only when every family is on (see `memo`).
    memo: Option<Arc<memo::Memo>>,
    /// Rule matches so far, in any mode (a value is clean when inspecting
    /// it left this unchanged).
    hits: u32,
    verdict: Verdict,
}

/// A name is echoed in a location only when it is plainly an identifier.
fn safe_name(name: &str) -> &str {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']'));
    if ok {
        name
    } else {
        "?"
    }
}

impl Scan {
    pub(crate) fn done(&self) -> bool {
        self.verdict.block.is_some()
    }

    fn enabled(&self, f: Family) -> bool {
        self.mode(f) != IdsMode::Off
    }

    /// The effective mode of `f` (`Off` for an index out of range, which
    /// `Family::idx()` never gives).
    fn mode(&self, f: Family) -> IdsMode {
        self.modes.get(f.idx()).copied().unwrap_or(IdsMode::Off)
    }

    /// Record a hit; `false` when the request is now blocked.
    fn hit(&mut self, family: Family, rule: &'static str, location: &str) -> bool {
        self.hits = self.hits.saturating_add(1);
        match self.mode(family) {
            IdsMode::Off => true,
            IdsMode::Detect => {
                if !self.verdict.detected.iter().any(|h| h.family == family) {
                    self.verdict.detected.push(Hit {
                        family,
                        rule,
                        location: location.to_string(),
                    });
                }
                true
            }
            IdsMode::Block => {
                self.verdict.block = Some(Hit {
                    family,
                    rule,
                    location: location.to_string(),
                });
                false
            }
        }
    }

    /// Decode and check one value.
    pub(crate) fn value(&mut self, kind: Kind, location: &str, raw: &str, plus: bool) {
        if raw.is_empty() || self.done() {
            return;
        }
        if self.prefilter && !prefilter::suspicious(raw) {
            return;
        }
        if self
            .memo
            .as_ref()
            .is_some_and(|m| m.is_clean(kind, plus, raw))
        {
            return;
        }
        let before = self.hits;
        let d = decode::decode(raw, plus);
        self.decoded(kind, location, &d, true);
        if let Some(m) = &self.memo {
            if self.hits == before {
                m.remember_clean(kind, plus, raw);
            }
        }
    }

    /// The rules again on `text`, a rewritten form of a value: a hit of
    /// `family` counts as rule `id`. `false` when the scan must stop.
    fn rescan(
        &mut self,
        kind: Kind,
        text: &str,
        family: Family,
        id: &'static str,
        location: &str,
    ) -> bool {
        let mut hit = false;
        rules::scan(kind, text, "", "", |h| {
            hit = h.family == family;
            !hit
        });
        !hit || self.hit(family, id, location)
    }

    fn decoded(&mut self, kind: Kind, location: &str, d: &decode::Decoded, nested: bool) {
        if kind != Kind::Path && self.enabled(Family::Sqli) {
            if let Some(id) = sqli::check(&d.folded) {
                if !self.hit(Family::Sqli, id, location) {
                    return;
                }
            } else if let Some(blanked) = decode::blank_controls(&d.text) {
                if let Some(id) = sqli::check(&decode::decode(&blanked, false).folded) {
                    if !self.hit(Family::Sqli, id, location) {
                        return;
                    }
                }
            }
        }
        let squeezed = decode::squeeze(&d.folded);
        let mut hits: Vec<rules::RuleHit> = Vec::new();
        rules::scan(kind, &d.folded, &squeezed, &d.text, |h| {
            hits.push(h);
            true
        });
        let matched = !hits.is_empty();
        for h in hits {
            if !self.hit(h.family, h.id, location) {
                return;
            }
        }
        if !matched
            && self.enabled(Family::Lfi)
            && rules::sensitive_file_after_command(&d.folded)
            && !self.hit(Family::Lfi, "lfi-sensitive-file", location)
        {
            return;
        }
        // shell words split by quotes and empty expansions (`c'a't`)
        if self.enabled(Family::Rce) {
            if let Some(u) = decode::unsplit(&d.folded) {
                if !self.rescan(kind, &u, Family::Rce, "rce-split-command", location) {
                    return;
                }
            }
            if rules::command_glued_in_word(&d.folded)
                && !self.hit(Family::Rce, "rce-split-command", location)
            {
                return;
            }
        }
        // JavaScript split by comments (`document/**/./**/cookie`)
        if self.enabled(Family::Xss) && d.folded.contains("/*") {
            let stripped = sqli::strip_comments(&d.folded);
            if !self.rescan(kind, &stripped, Family::Xss, "xss-comment-split", location) {
                return;
            }
        }
        if self.enabled(Family::Java)
            && decode::jndi_lookup(&d.folded)
            && !self.hit(Family::Java, "java-log4j-lookup", location)
        {
            return;
        }
        if self.enabled(Family::Java) {
            if let Some(ac) = rules::B64_FRAGMENTS.as_ref() {
                if ac.is_match(&d.text) && !self.hit(Family::Java, "java-base64-gadget", location) {
                    return;
                }
            }
        }
        if nested {
            if let Some(inner) = base64_text(&d.text) {
                let d2 = decode::decode(&inner, false);
                self.decoded(kind, location, &d2, false);
            }
        }
    }

    fn path(&mut self, raw_path: &str) {
        self.value(Kind::Path, "path", raw_path, false);
        for seg in raw_path.split('/') {
            if seg.is_empty() {
                continue;
            }
            let d = decode::decode(seg, false);
            let s = d.folded.as_str();
            if s.starts_with('.')
                && s != "."
                && s != ".."
                && s != ".well-known"
                && !s.starts_with("...")
                && !self.hit(Family::Lfi, "lfi-hidden-file", "path")
            {
                return;
            }
            if SENSITIVE_EXT.iter().any(|e| s.ends_with(e))
                && !self.hit(Family::Lfi, "lfi-sensitive-extension", "path")
            {
                return;
            }
            self.value(Kind::Value, "path", seg, false);
            // path parameters: `/login;jsessionid=…`
            for param in seg.split(';').skip(1) {
                let name = param.split_once('=').map_or(param, |(n, _)| n);
                self.session_parameter("path-parameter", name, false);
            }
            if self.done() {
                return;
            }
        }
    }

    /// `a=1&b=2` (query strings and form bodies).
    fn pairs(&mut self, s: &str, what: &str, excluded: &dyn Fn(&str, &str) -> bool) {
        for pair in s.split('&') {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = match pair.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (pair, None),
            };
            let dname = decode::decode(name, true).text;
            if excluded(what, &dname) {
                continue;
            }
            let name_loc = format!("{what}-name");
            self.value(Kind::Name, &name_loc, name, true);
            self.session_parameter(&name_loc, name, true);
            if let Some(v) = value {
                let loc = format!("{what}:{}", safe_name(&dname));
                self.value(Kind::Value, &loc, v, true);
                if self.enabled(Family::Rfi) && !self.done() {
                    self.rfi_param(&dname, v, &loc);
                }
            }
            if self.done() {
                return;
            }
        }
    }

    /// A session identifier passed as a parameter (query, form, multipart
    /// or path parameter; never a cookie or a JSON member).
    fn session_parameter(&mut self, loc: &str, raw: &str, plus: bool) {
        if self.done() || !self.enabled(Family::Session) || raw.is_empty() {
            return;
        }
        if rules::session_parameter(&decode::decode(raw, plus).folded) {
            self.hit(Family::Session, "session-id-parameter", loc);
        }
    }

    /// A JSON member named like a framework's session cookie.
    pub(crate) fn session_json_member(&mut self, loc: &str, raw: &str) {
        if self.done() || !self.enabled(Family::Session) || raw.is_empty() {
            return;
        }
        if rules::framework_session_name(&decode::decode(raw, false).folded) {
            self.hit(Family::Session, "session-id-parameter", loc);
        }
    }

    /// A URL handed to a parameter whose name says it is included or loaded.
    fn rfi_param(&mut self, name: &str, raw: &str, loc: &str) {
        let mut n = name.trim().to_ascii_lowercase();
        // `_conf[path]`, `globals[appdir][]`: the innermost named key
        while let Some(stripped) = n.strip_suffix("[]") {
            n = stripped.to_string();
        }
        if let Some(key) = n
            .strip_suffix(']')
            .and_then(|s| s.rsplit_once('['))
            .map(|(_, k)| k.trim_matches(|c| c == '\'' || c == '"').to_string())
        {
            n = key;
        }
        let includey = [
            "path", "dir", "file", "include", "inc", "require", "template", "root", "conf",
            "config", "page", "load", "lang", "module", "src", "doc",
        ]
        .iter()
        .any(|k| n.ends_with(k));
        if !includey {
            return;
        }
        let v = decode::decode(raw, true).folded;
        if v.starts_with("http://")
            || v.starts_with("https://")
            || v.starts_with("ftp://")
            || v.starts_with("ftps://")
            || unc_or_scheme_relative(&v)
        {
            self.hit(Family::Rfi, "rfi-include-parameter", loc);
        }
    }

    fn cookies(&mut self, header: &str, excluded: &dyn Fn(&str, &str) -> bool) {
        for c in header.split(';') {
            let c = c.trim();
            if c.is_empty() {
                continue;
            }
            let (name, value) = c.split_once('=').unwrap_or((c, ""));
            if excluded("cookie", name) {
                continue;
            }
            self.value(Kind::Name, "cookie-name", name, false);
            let loc = format!("cookie:{}", safe_name(name));
            // a callback or return URL on loopback (`next-auth.callback-url`,
            // Grafana's `redirect_to`: a browser developing on `localhost`)
            // is read as a Referer is, not as a parameter naming a host to
            // fetch
            let url_like = value.contains("//") || value.contains("%2F") || value.contains("%2f");
            let kind = if url_like && loopback_url(&decode::decode(value, false).folded) {
                Kind::Header
            } else {
                Kind::Value
            };
            self.value(kind, &loc, value, false);
            if self.done() {
                return;
            }
        }
    }

    fn header(&mut self, lname: &str, value: &str) {
        let loc = format!("header:{}", safe_name(lname));
        // a command line as the whole User-Agent or Referer (a tool's own
        // agent is `name/version`, never `name -opt` or `name http://…`)
        if matches!(lname, "user-agent" | "referer")
            && self.enabled(Family::Rce)
            && rules::header_command_line(value)
            && !self.hit(Family::Rce, "rce-header-command-line", &loc)
        {
            return;
        }
        // A value that parses under its header's grammar is protocol, not
        // data (a browser's `Accept` or `Sec-CH-UA`); only the text inside
        // its quoted strings is free for a client to fill, so only that is
        // inspected.
        if let Some(quoted) = headers::parse(lname, value) {
            for q in quoted {
                self.value(Kind::Header, &loc, q, false);
            }
            return;
        }
        let filename = lname.contains("filename")
            || lname.contains("file-name")
            || lname.contains("file_name");
        if filename {
            self.value(Kind::Filename, &loc, value, false);
        }
        self.value(Kind::Header, &loc, value, false);
    }

    /// The parts of a multipart body; `false` when `boundary` splits none
    /// off (the caller inspects the body another way).
    fn multipart(&mut self, body: &str, boundary: &str) -> bool {
        let delim = format!("--{boundary}");
        if !body.contains(delim.as_str()) {
            return false;
        }
        for part in body.split(delim.as_str()).skip(1) {
            if part.starts_with("--") {
                break;
            }
            let part = part
                .strip_prefix("\r\n")
                .or_else(|| part.strip_prefix('\n'))
                .unwrap_or(part);
            let (head, content) = match part.find("\r\n\r\n") {
                Some(i) => (&part[..i], &part[i + 4..]),
                None => match part.find("\n\n") {
                    Some(i) => (&part[..i], &part[i + 2..]),
                    None => (part, ""),
                },
            };
            let content = content
                .strip_suffix("\r\n")
                .or_else(|| content.strip_suffix('\n'))
                .unwrap_or(content);
            let mut name = String::new();
            let mut is_xml = false;
            for line in head.lines() {
                let l = line.to_ascii_lowercase();
                if l.starts_with("content-disposition:") {
                    for p in line.split(';').skip(1) {
                        let p = p.trim();
                        if let Some(v) = p.strip_prefix("name=") {
                            name = v.trim_matches('"').to_string();
                        } else if let Some(v) = p.strip_prefix("filename=") {
                            let v = v.trim_matches('"');
                            self.value(Kind::Filename, "multipart-filename", v, false);
                            self.value(Kind::Value, "multipart-filename", v, false);
                        }
                    }
                } else if l.starts_with("content-type:") && l.contains("xml") {
                    is_xml = true;
                }
            }
            self.value(Kind::Name, "multipart-name", &name, false);
            self.session_parameter("multipart-name", &name, false);
            let loc = format!("multipart:{}", safe_name(&name));
            if is_xml || content.trim_start().starts_with("<?xml") {
                self.xml(content);
            } else {
                self.value(Kind::Value, &loc, content, false);
            }
            if self.done() {
                break;
            }
        }
        true
    }

    /// XML: attribute values and text nodes are the values; a DOCTYPE that
    /// declares external entities is an attack of its own.
    // A byte scanner: every index is guarded by the loop's `< len` bound.
    #[allow(clippy::indexing_slicing)]
    fn xml(&mut self, body: &str) {
        let lower = body.to_ascii_lowercase();
        if (lower.contains("<!entity") || lower.contains("<!doctype"))
            && (lower.contains("system") || lower.contains("public"))
            && !self.hit(Family::Generic, "xxe-external-entity", "xml")
        {
            return;
        }
        let b = body.as_bytes();
        let mut i = 0;
        while i < b.len() && !self.done() {
            if b[i] == b'<' {
                // a tag: scan its attribute values
                let end = body[i..].find('>').map_or(b.len(), |e| i + e);
                let tag = &body[i..end];
                let mut rest = tag;
                while let Some(eq) = rest.find('=') {
                    let after = rest[eq + 1..].trim_start();
                    let q = after.chars().next();
                    if let Some(q @ ('"' | '\'')) = q {
                        let inner = &after[1..];
                        let close = inner.find(q).unwrap_or(inner.len());
                        self.value(Kind::Value, "xml", &inner[..close], false);
                        rest = &inner[(close + 1).min(inner.len())..];
                    } else {
                        rest = after;
                    }
                }
                i = end + 1;
            } else {
                let end = body[i..].find('<').map_or(b.len(), |e| i + e);
                let text = body[i..end].trim();
                if !text.is_empty() {
                    self.value(Kind::Value, "xml", text, false);
                }
                i = end;
            }
        }
    }
}

/// `//host/…` or `\\\\host\\share…`: a URL or UNC path without a scheme.
fn unc_or_scheme_relative(v: &str) -> bool {
    static RE: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^(//|\\\\)[a-z0-9][\w.-]*(@[\w.-]+)?[/\\]").ok()
    });
    RE.as_ref().is_some_and(|re| re.is_match(v.trim()))
}

/// A plain http(s) URL on a loopback host (a browser's callback or return
/// URL cookie for an app on `localhost`).
fn loopback_url(v: &str) -> bool {
    static RE: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^https?://(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(:\d{1,5})?(/[\w./%~+-]*)?(\?[\w.%=&/+-]*)?$").ok()
    });
    RE.as_ref().is_some_and(|re| re.is_match(v.trim()))
}

/// The `boundary` parameter of a `multipart/*` Content-Type, its case kept
/// (the parameter's name is case-insensitive, its value is not).
fn multipart_boundary(ctype: &str) -> Option<String> {
    ctype.split(';').skip(1).find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// Path extensions of files that are never an API resource (backups,
/// dumps, keys, configuration).
const SENSITIVE_EXT: &[&str] = &[
    ".sql",
    ".sql.zip",
    ".sql.gz",
    ".bak",
    ".backup",
    ".old",
    ".orig",
    ".save",
    ".swp",
    ".swo",
    ".dump",
    ".sqlite",
    ".sqlite3",
    ".mdb",
    ".pem",
    ".key",
    ".ini",
    ".log",
    ".env",
    ".cfg",
    ".conf",
    ".htpasswd",
    ".htaccess",
    ".git",
    ".svn",
    ".tar.gz",
    ".tgz",
    ".7z",
    ".rar",
];

/// A value that is entirely base64 and decodes to readable text: that text.
fn base64_text(s: &str) -> Option<String> {
    use base64::Engine;
    let t = s.trim();
    if t.len() < 16 || t.len() > 8192 {
        return None;
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
    {
        return None;
    }
    let body = t.trim_end_matches('=');
    let engines = [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for e in engines {
        let mut b = body;
        // tolerate a truncated last quantum
        if b.len() % 4 == 1 {
            b = &b[..b.len() - 1];
        }
        if let Ok(bytes) = e.decode(b) {
            if let Ok(text) = String::from_utf8(bytes) {
                let printable = text
                    .chars()
                    .filter(|c| !c.is_control() || c.is_whitespace())
                    .count();
                if printable * 10 >= text.chars().count() * 9 {
                    return Some(text);
                }
            }
        }
    }
    None
}

mod prefilter {
    //! The clean-value shortcut: a value with no character and no word any
    //! rule needs cannot match, so it is not decoded at all. The eval proves
    //! on the whole corpus that the shortcut never changes a verdict.
    use std::sync::LazyLock;

    use aho_corasick::AhoCorasick;

    // A 256-entry table indexed by a byte.
    #[allow(clippy::indexing_slicing)]
    static SPECIAL: [bool; 256] = {
        let mut t = [false; 256];
        let s = b"'\"<>;|&$`(){}[]\\%#!*^~=+\n\r\t?@,";
        let mut i = 0;
        while i < s.len() {
            t[s[i] as usize] = true;
            i += 1;
        }
        let mut b = 0;
        while b < 32 {
            t[b] = true;
            b += 1;
        }
        let mut b = 127;
        while b < 256 {
            t[b] = true;
            b += 1;
        }
        t
    };

    const TRIGGERS: &[&str] = &[
        "..",
        "/",
        "\\",
        ":",
        " -",
        "etc",
        "proc",
        "passwd",
        "ini",
        "system32",
        ".ssh",
        ".aws",
        // every word a rule needs must be here (or imply a special
        // character): `tests::the_prefilter_never_hides_a_rule_match`
        "npmrc",
        "netrc",
        "pgpass",
        ".cnf",
        "kube",
        ".git",
        ".env",
        ".ht",
        "id_",
        "config",
        "select",
        "union",
        "insert",
        "update",
        "delete",
        "drop",
        "create",
        "alter",
        "truncate",
        "exec",
        "declare",
        "waitfor",
        "sleep",
        "benchmark",
        "schema",
        "xp_",
        "sp_",
        "utl_",
        "msdasql",
        "char",
        "pg_",
        "sqlite",
        "sysobjects",
        "tempdb",
        "msys",
        "having",
        "order",
        "group",
        "outfile",
        "procedure",
        "java",
        "jndi",
        "ro0ab",
        "ztaa",
        "s7qaf",
        "aced",
        "builder",
        "runtime",
        "transformer",
        "closure",
        "factory",
        "omg",
        "com.sun",
        "sun.",
        "ognl",
        "script",
        "document",
        "window",
        "alert",
        "data",
        "file",
        "php",
        "sess",
        "extension",
        "opcache",
        "ansible",
        "chef",
        "cscli",
        "pipx",
        "whoami",
        "ifconfig",
        "ipconfig",
        "uname",
        "nohup",
        "strace",
        "cpulimit",
        "localhost",
        "169.254",
        "internal",
        "localtest",
        "0x",
        "__",
        "session",
        "sid",
        "cftoken",
        "cfid",
        "require",
        "constructor",
        "process",
        "console",
        "function",
        "while",
        "child_",
        "xyqktkrf",
        "for ",
        "if ",
        "alias ",
        "+ad",
        "tab",
        "newline",
        "nvarchar",
        "varchar",
        "nchar",
        "cmd",
        "powershell",
        "bin",
        "dev",
        "wget",
        "curl",
        "ping",
        "regedit",
        "invoke",
        "mshta",
        "certutil",
        "_",
        "import",
        "javascript",
        "vbscript",
        "entity",
        "doctype",
        "interrupts",
        "backup",
        "sql",
        "bak",
        "dump",
        ".log",
        ".key",
        ".pem",
        "sess_",
        "sleep",
        "like",
        " or ",
        " and ",
        " xor ",
        "null",
        "time ",
        "timeout",
        "awk",
        "gunzip",
        "zcat",
        "ls",
        "cat",
        "id",
        "ps",
        "echo",
        "base64",
        "netcat",
        "ncat",
        "nc ",
        "bash",
        "sh ",
        "perl",
        "python",
        "ruby",
        "node",
        "lua",
        "com.",
        "org.",
        "javax",
        "groovy",
        "freemarker",
        "mozilla",
        "spring",
        "pht",
        "jsp",
        "asp",
        "phar",
        "cgi",
        ".sh",
        "cer",
        "asa",
        "war",
        "jar",
        ".inc",
        "rmt",
        "perf",
        "who",
        "date",
        "env",
        "ver",
        "help",
        "noop",
        "apop",
        "2250738585072011",
        "jdbcrowset",
        "lazymap",
        "templatesimpl",
        "transformedmap",
        "xmldecoder",
        "classloader",
        "exports",
        "shtml",
        "htaccess",
        "htpasswd",
        "systeminfo",
        "spawn",
        "popen",
        "capture",
        "system",
        "loopback",
        "cluster.local",
        ".read",
        ".once",
        ".open",
        ".output",
        ".load",
        ".tables",
        ".databases",
        ".import",
        "lwp-",
        "aa-",
        "appendchild",
        "innerhtml",
        "outerhtml",
        "globaleval",
        // `xss-dom-sink`: `parent.name`, `self.eval`
        "parent",
        "self",
        "frames",
        "globalthis",
        "this",
        "top",
        // `rce-powershell`
        "new-object",
        "webclient",
        "executionpolicy",
        "childitem",
        "mppreference",
        // `rce-command-start`: a command and a file or address argument
        ".exe",
        ".txt",
        ".gz",
        ".py",
        ".pl",
        ".rb",
        ".json",
        ".yml",
        ".yaml",
        ".conf",
        "sed ",
        "grep",
        "head",
        "tail",
        "find",
        "ssh",
        "scp",
        "set ",
        "export",
        "gcc",
        "cc ",
        "c89",
        "c99",
        "kill",
        "tar ",
        "dd ",
        "rm ",
        "cp ",
        "mv ",
        "ll ",
        "npm",
        "pip",
        "zstd",
        "unxz",
        "xz",
        "bz",
        "visudo",
        "iwr",
        "chmod",
        "chown",
        "crontab",
        "useradd",
        "systemctl",
        "nmap",
        "socat",
        "busybox",
        "mkfifo",
        "ltrace",
        "tcpdump",
        "bitsadmin",
        "rundll",
        "regsvr",
        "wmic",
        "vssadmin",
        "netstat",
        "nslookup",
        "pipx",
    ];

    static AC: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(TRIGGERS)
            .ok()
    });

    /// Is `b` one of the characters that always pass the prefilter?
    #[cfg(test)]
    pub fn is_special(b: u8) -> bool {
        SPECIAL.get(b as usize).copied().unwrap_or(true)
    }

    /// Could any rule match this raw value?
    // A 256-entry table indexed by a byte.
    #[allow(clippy::indexing_slicing)]
    pub fn suspicious(raw: &str) -> bool {
        if raw.bytes().any(|b| SPECIAL[b as usize]) {
            return true;
        }
        if raw.len() >= 16
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            // possibly base64 of something
            return true;
        }
        if super::rules::B64_FRAGMENTS
            .as_ref()
            .is_some_and(|ac| ac.is_match(raw))
        {
            return true;
        }
        match AC.as_ref() {
            Some(ac) => ac.is_match(raw),
            None => true,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests;

/// The parts of `path` that fill the `{param}` (or `{*rest}`) segments of
/// `pattern`, as a path (`/value1/value2`); empty when the route is static.
pub fn dynamic_segments(pattern: &str, path: &str) -> String {
    let mut out = String::new();
    let mut segs = path.split('/');
    for p in pattern.split('/') {
        if p.starts_with("{*") {
            for rest in segs.by_ref() {
                out.push('/');
                out.push_str(rest);
            }
            break;
        }
        let Some(seg) = segs.next() else { break };
        if p.starts_with('{') {
            out.push('/');
            out.push_str(seg);
        }
    }
    // a path longer than its pattern cannot have matched it; inspect the rest
    for rest in segs {
        out.push('/');
        out.push_str(rest);
    }
    out
}

/// Whether `body` starts (after whitespace) like a JSON document: an object
/// or an array. Such a body is walked as JSON unless it is declared a form
/// or XML, and such a WebSocket message is read as JSON (`gateway::ws`).
pub fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}
