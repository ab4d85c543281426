//! The audit trail: one event per action, written by the one write path in
//! the same transaction as the change it describes (AUD-1, first cut), with
//! the running application version in every event (OPS-6).
//!
//! An event carries who (actor type, id, e-mail), from where (IP, user
//! agent, request id), what (action, outcome, target) and the data changed
//! as a before/after diff of the changed fields only; values of sensitive
//! fields are replaced by `"[redacted]"` (AUD-3). Tenant admins read the
//! trail with `GET /api/v1/audit`.

pub mod access_log;
pub mod chain;
pub mod export;
mod http;
mod integrity;
mod query;
mod retention;

use serde::Serialize;
use serde_json::Value;

pub use chain::{GENESIS, Hash, from_hex as chain_hash_from_hex, to_hex as hash_to_hex};
pub use http::{access_log_router, router};
pub use integrity::{VerifyReport, checkpoint_all, resign_checkpoints, verify, verify_in_halves};
pub use query::{AuditError, AuditEvent, AuditFilter, Page, list};
pub use retention::{RetentionSummary, apply_retention};

use crate::store::sql::Combined;

/// Who acted.
#[derive(Clone, Debug, Serialize)]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: ActorKind,
    pub id: Option<String>,
    pub email: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Anonymous,
    /// The operator running the CLI on the server.
    Operator,
    /// A scheduled job of the server itself.
    System,
}

impl ActorKind {
    fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Anonymous => "anonymous",
            ActorKind::Operator => "operator",
            ActorKind::System => "system",
        }
    }
}

impl Actor {
    pub fn anonymous(claimed_email: Option<String>) -> Actor {
        Actor {
            kind: ActorKind::Anonymous,
            id: None,
            email: claimed_email,
        }
    }

    pub fn system(job: &str) -> Actor {
        Actor {
            kind: ActorKind::System,
            id: Some(format!("job:{job}")),
            email: None,
        }
    }

    pub fn operator() -> Actor {
        let name = std::env::var("USER").unwrap_or_else(|_| "cli".to_owned());
        Actor {
            kind: ActorKind::Operator,
            id: Some(format!("cli:{name}")),
            email: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// Where a request came from; filled in by the HTTP layer or the CLI.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl RequestMeta {
    pub fn cli() -> RequestMeta {
        RequestMeta {
            request_id: uuid::Uuid::new_v4().to_string(),
            ip: None,
            user_agent: Some(format!("strongroom-cli/{}", crate::VERSION)),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
}

pub(crate) struct NewEvent<'a> {
    pub tenant_id: &'a str,
    pub seq: i64,
    pub occurred_at: &'a str,
    pub action: &'a str,
    pub outcome: Outcome,
    pub actor: &'a Actor,
    pub meta: &'a RequestMeta,
    pub target: Option<&'a Target>,
    pub changes: Option<Value>,
}

/// Adds the statement that appends `event` after the event whose hash is
/// `prev` to `batch`; returns its hash, which the caller makes the tenant's
/// chain head (`tenant_sequences.audit_head`) in the same batch.
pub(crate) fn append(batch: &mut Combined, event: NewEvent<'_>, prev: &Hash) -> Hash {
    let id = uuid::Uuid::now_v7().to_string();
    let changes = event.changes.map(|c| c.to_string());
    let chained = chain::Chained {
        id: &id,
        tenant_id: event.tenant_id,
        seq: event.seq,
        occurred_at: event.occurred_at,
        action: event.action,
        outcome: event.outcome.as_str(),
        actor_type: event.actor.kind.as_str(),
        actor_id: event.actor.id.as_deref(),
        actor_email: event.actor.email.as_deref(),
        ip: event.meta.ip.as_deref(),
        user_agent: event.meta.user_agent.as_deref(),
        request_id: &event.meta.request_id,
        app_version: crate::VERSION,
        target_type: event.target.map(|t| t.kind),
        target_id: event.target.map(|t| t.id.as_str()),
        changes: changes.as_deref(),
    };
    let hash = chained.hash(prev);
    let owned = |v: Option<&str>| v.map(str::to_owned);
    let values = [
        batch.param(id.clone()),
        batch.param(chained.tenant_id.to_owned()),
        batch.param(chained.seq),
        batch.param(chained.occurred_at.to_owned()),
        batch.param(chained.action.to_owned()),
        batch.param(event.outcome.as_str()),
        batch.param(event.actor.kind.as_str()),
        batch.param(owned(chained.actor_id)),
        batch.param(owned(chained.actor_email)),
        batch.param(owned(chained.ip)),
        batch.param(owned(chained.user_agent)),
        batch.param(chained.request_id.to_owned()),
        batch.param(crate::VERSION),
        batch.param(event.target.map(|t| t.kind)),
        batch.param(owned(chained.target_id)),
        batch.param(changes.clone()),
        batch.param(chain::to_hex(prev)),
        batch.param(chain::to_hex(&hash)),
    ];
    batch.push(format!(
        "INSERT INTO audit_events (id, tenant_id, seq, occurred_at, action, outcome, actor_type, \
         actor_id, actor_email, ip, user_agent, request_id, app_version, target_type, target_id, \
         changes, prev_hash, hash) VALUES ({})",
        values.join(", ")
    ));
    hash
}
