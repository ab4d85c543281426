//! The audit trail's append (AUD-1, AUD-7): every write job adds its event,
//! chained to the one before by hash, in the same transaction as the change.
//! Reading, verifying and exporting the trail is the audit domain's.

use serde_json::Value;

use super::chain::{self, Hash};
use super::sql::Combined;
use crate::context::{Actor, Outcome, RequestMeta, Target};

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
    pub environment: Option<&'a str>,
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
        environment: event.environment,
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
    // No environment: a schema held back before the column existed.
    let (column, value) = match event.environment {
        Some(environment) => (", environment", format!(", {}", batch.param(environment))),
        None => ("", String::new()),
    };
    batch.push(format!(
        "INSERT INTO audit_events (id, tenant_id, seq, occurred_at, action, outcome, actor_type, \
         actor_id, actor_email, ip, user_agent, request_id, app_version, target_type, target_id, \
         changes, prev_hash, hash{column}) VALUES ({}{value})",
        values.join(", ")
    ));
    hash
}
