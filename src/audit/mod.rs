//! The audit trail: one event per action, written by the one write path in
//! the same transaction as the change it describes (AUD-1, first cut), with
//! the running application version in every event (OPS-6).
//!
//! An event carries who (actor type, id, e-mail), from where (IP, user
//! agent, request id), what (action, outcome, target) and the data changed
//! as a before/after diff of the changed fields only; values of sensitive
//! fields are replaced by `"[redacted]"` (AUD-3). Tenant admins read the
//! trail with `GET /api/v1/audit`.

mod http;

use serde::Serialize;
use serde_json::Value;
use sqlx::{AnyConnection, Row};

pub use http::router;

use crate::store::{ReadTx, StoreError};

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
}

impl ActorKind {
    fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Anonymous => "anonymous",
            ActorKind::Operator => "operator",
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

pub(crate) async fn append(
    conn: &mut AnyConnection,
    event: NewEvent<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (id, tenant_id, seq, occurred_at, action, outcome, actor_type, \
         actor_id, actor_email, ip, user_agent, request_id, app_version, target_type, target_id, changes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(event.tenant_id)
    .bind(event.seq)
    .bind(event.occurred_at)
    .bind(event.action)
    .bind(event.outcome.as_str())
    .bind(event.actor.kind.as_str())
    .bind(event.actor.id.as_deref())
    .bind(event.actor.email.as_deref())
    .bind(event.meta.ip.as_deref())
    .bind(event.meta.user_agent.as_deref())
    .bind(&event.meta.request_id)
    .bind(crate::VERSION)
    .bind(event.target.map(|t| t.kind))
    .bind(event.target.map(|t| t.id.as_str()))
    .bind(event.changes.map(|c| c.to_string()))
    .execute(conn)
    .await?;
    Ok(())
}

/// An audit event as the API shows it.
#[derive(Debug, Serialize)]
pub struct AuditEvent {
    pub id: String,
    pub seq: i64,
    pub occurred_at: String,
    pub action: String,
    pub outcome: String,
    pub actor: Value,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: String,
    pub app_version: String,
    pub target: Option<Value>,
    pub changes: Option<Value>,
}

/// Newest first; `before_seq` continues a previous page.
pub async fn list(
    tx: &mut ReadTx,
    tenant_id: &str,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, seq, occurred_at, action, outcome, actor_type, actor_id, actor_email, ip, \
         user_agent, request_id, app_version, target_type, target_id, changes \
         FROM audit_events WHERE tenant_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
    )
    .bind(tenant_id)
    .bind(before_seq.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    rows.iter()
        .map(|row| {
            let target_type: Option<String> = row.try_get("target_type")?;
            let target_id: Option<String> = row.try_get("target_id")?;
            let changes: Option<String> = row.try_get("changes")?;
            Ok(AuditEvent {
                id: row.try_get("id")?,
                seq: row.try_get("seq")?,
                occurred_at: row.try_get("occurred_at")?,
                action: row.try_get("action")?,
                outcome: row.try_get("outcome")?,
                actor: serde_json::json!({
                    "type": row.try_get::<String, _>("actor_type")?,
                    "id": row.try_get::<Option<String>, _>("actor_id")?,
                    "email": row.try_get::<Option<String>, _>("actor_email")?,
                }),
                ip: row.try_get("ip")?,
                user_agent: row.try_get("user_agent")?,
                request_id: row.try_get("request_id")?,
                app_version: row.try_get("app_version")?,
                target: target_type.map(|t| serde_json::json!({"type": t, "id": target_id})),
                changes: changes
                    .map(|c| serde_json::from_str(&c))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(format!("audit changes: {e}")))?,
            })
        })
        .collect()
}
