//! The task events hub: one publisher side, one bounded subscription per
//! WebSocket connection.
//!
//! Threat: one slow or stalled client making the server buffer without bound
//! or slowing every other client. Guarantee: [`Events::publish`] never
//! waits: events go into a bounded broadcast ring; a subscriber that falls
//! more than [`BUFFER`] events behind is told so ([`Next::Lagged`]) and its
//! connection is closed. Each event is serialised once, whoever receives it.
//! Delivery filtering (`task_available` for principals with `read:agent`;
//! the other events, which carry the task's contents, for principals with
//! `read:tasks` about their own tasks or the tasks they hold as a worker,
//! admin all: what `GET /api/tasks/{id}` would show them) is
//! [`Event::visible_to`].
//!
//! With Redis (`crate::state`), [`Events::publish`] also sends the event on
//! the pub/sub channel (through a bounded queue: still never waits) and every
//! other instance delivers it with [`Events::publish_local`]. Not covered:
//! events published while Redis is down are not replayed.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::authn::Principal;
use crate::authz::Permission;

/// Events a subscriber may fall behind before it is disconnected.
pub const BUFFER: usize = 256;

/// What happened to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    TaskCreated,
    TaskClaimed,
    TaskUpdated,
    TaskFinished,
    /// A task was deleted: its id only (`{"type": "task_deleted", "task":
    /// {"id": ...}}`), to its owner and the worker that held it.
    TaskDeleted,
    /// A task was queued; sent to agent workers (`read:agent`) with the
    /// task's id, priority, status and time only.
    TaskAvailable,
}

/// One event, serialised once.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub owner_id: String,
    pub agent_id: Option<String>,
    /// `{"type": ..., "task": {...}}`
    pub json: Arc<str>,
}

impl Event {
    /// Build an event around an already-serialised task object.
    pub fn new<T: Serialize>(
        kind: EventKind,
        owner_id: &str,
        agent_id: Option<&str>,
        task: &T,
    ) -> Event {
        #[derive(Serialize)]
        struct Wire<'a, T> {
            #[serde(rename = "type")]
            kind: EventKind,
            task: &'a T,
        }
        let json =
            serde_json::to_string(&Wire { kind, task }).unwrap_or_else(|_| String::from("{}"));
        Event {
            kind,
            owner_id: owner_id.to_string(),
            agent_id: agent_id.map(str::to_string),
            json: json.into(),
        }
    }

    /// May this principal receive this event? Task contents go only where
    /// `GET /api/tasks/{id}` would answer them: `read:tasks` and the
    /// caller's own task or one it holds as a worker (admin: every task).
    pub fn visible_to(&self, p: &Principal) -> bool {
        match self.kind {
            EventKind::TaskAvailable => p.permissions.allows(Permission::ReadAgent),
            _ => {
                p.permissions.allows(Permission::Admin)
                    || (p.permissions.allows(Permission::ReadTasks)
                        && (self.owner_id == p.user_id
                            || self.agent_id.as_deref() == Some(p.user_id.as_str())))
            }
        }
    }
}

/// What a subscriber gets next.
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// The subscriber fell behind and must be disconnected.
    Lagged,
    /// The hub is gone (shutdown).
    Closed,
}

/// The hub (cheap to clone).
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    /// Other instances (Redis pub/sub) when the state is shared.
    shared: crate::state::SharedState,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        Events::with_shared(crate::state::SharedState::Local)
    }

    /// A hub whose events also reach the other instances.
    pub fn with_shared(shared: crate::state::SharedState) -> Events {
        let (tx, _) = broadcast::channel(BUFFER);
        Events { tx, shared }
    }

    /// Publish an event from this instance (never waits): to this
    /// instance's subscribers and, when shared, to the other instances.
    pub fn publish(&self, ev: Event) {
        self.shared.publish_event(&ev);
        self.publish_local(ev);
    }

    /// Would a published event reach anyone (a subscriber here, or the
    /// other instances)? Publishers skip building events nobody receives.
    pub fn has_audience(&self) -> bool {
        self.tx.receiver_count() > 0 || self.shared.is_shared()
    }

    /// Deliver an event to this instance's subscribers only.
    pub fn publish_local(&self, ev: Event) {
        // No subscribers is not an error.
        let _ = self.tx.send(ev);
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }
}

/// One connection's bounded view of the hub.
pub struct Subscription {
    rx: broadcast::Receiver<Event>,
}

impl Subscription {
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Ok(ev) => Next::Event(ev),
            Err(broadcast::error::RecvError::Lagged(_)) => Next::Lagged,
            Err(broadcast::error::RecvError::Closed) => Next::Closed,
        }
    }
}
