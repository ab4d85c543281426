//! Reading the trail back: filters (time range, actor, action, target,
//! outcome) and seq-based cursors, shared by the list API, the exports and
//! the CLI (AUD-4).

use serde::Serialize;
use serde_json::Value;

use crate::store::db;
use crate::store::sql::Sql;
use crate::store::{ReadTx, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("retention must be between 90 and 36500 days")]
    RetentionOutOfRange,
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<db::Error> for AuditError {
    fn from(e: db::Error) -> Self {
        AuditError::Store(e.into())
    }
}

/// An audit event as the API and the exports show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
    /// The instance that wrote it (TEN-3): a test system's events never
    /// pass for production's.
    pub environment: Option<String>,
    pub target: Option<Value>,
    pub changes: Option<Value>,
    pub hash: Option<String>,
}

impl AuditEvent {
    /// Limits a record's (or a file's) diff to what `reach` may read
    /// (ACC-1, AUD-2): a reader who may not read the collection's records
    /// sees which fields changed, each value as `"[redacted]"`.
    pub fn limit_to(&mut self, reach: &crate::context::Reach) {
        let kind = self
            .target
            .as_ref()
            .and_then(|t| t.get("type"))
            .and_then(Value::as_str);
        if !matches!(kind, Some("record" | "file")) || reach.reads_every() {
            return;
        }
        let Some(changes) = self.changes.as_mut() else {
            return;
        };
        let readable = changes
            .get("collection")
            .and_then(Value::as_str)
            .is_some_and(|c| kind == Some("record") && reach.reads(c));
        if readable {
            return;
        }
        for side in ["before", "after"] {
            if let Some(Value::Object(map)) = changes.get_mut(side) {
                for value in map.values_mut() {
                    if !value.is_null() {
                        *value = Value::String("[redacted]".into());
                    }
                }
            }
        }
        changes["values_hidden"] = Value::Bool(true);
    }
}

/// Which events to read. Every filter is optional; `from` is inclusive,
/// `to` exclusive.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    /// An actor id or e-mail address.
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: Option<String>,
    /// Support grants the reader may not be told of yet (legal orders,
    /// ACC-2): events about them are left out.
    pub sealed_grants: Vec<String>,
}

/// Parses an RFC 3339 query parameter into the stored time format.
pub(crate) fn parse_time(name: &str, value: &str) -> Result<String, AuditError> {
    crate::clock::parse_rfc3339(value)
        .map(crate::clock::format)
        .ok_or_else(|| AuditError::InvalidQuery(format!("{name} must be an RFC 3339 date-time")))
}

impl AuditFilter {
    /// Takes the filter parameters out of `pairs`, leaving the others.
    pub fn take(pairs: &mut Vec<(String, String)>) -> Result<AuditFilter, AuditError> {
        let mut filter = AuditFilter::default();
        let mut rest = Vec::new();
        for (key, value) in pairs.drain(..) {
            match key.as_str() {
                "from" => filter.from = Some(parse_time("from", &value)?),
                "to" => filter.to = Some(parse_time("to", &value)?),
                "actor" => filter.actor = Some(value),
                "action" => filter.action = Some(value),
                "target_type" => filter.target_type = Some(value),
                "target_id" => filter.target_id = Some(value),
                "outcome" => match value.as_str() {
                    "success" | "failure" | "denied" => filter.outcome = Some(value),
                    _ => {
                        return Err(AuditError::InvalidQuery(
                            "outcome must be success, failure or denied".into(),
                        ));
                    }
                },
                _ => rest.push((key, value)),
            }
        }
        *pairs = rest;
        Ok(filter)
    }

    fn push_sql(&self, sql: &mut Sql) {
        let clauses = [
            (" AND occurred_at >= ?", &self.from),
            (" AND occurred_at < ?", &self.to),
            (" AND action = ?", &self.action),
            (" AND target_type = ?", &self.target_type),
            (" AND target_id = ?", &self.target_id),
            (" AND outcome = ?", &self.outcome),
            (" AND (actor_id = ? OR actor_email = ?)", &self.actor),
        ];
        for (template, value) in clauses {
            if let Some(value) = value {
                sql.bind(template, value.clone());
            }
        }
        for grant in &self.sealed_grants {
            sql.bind(
                " AND NOT (target_type = 'support_grant' AND target_id = ?)",
                grant.clone(),
            );
        }
    }
}

/// Page direction and position.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    /// Newest first, older than `before` (a seq) when given.
    NewestFirst { before: Option<i64> },
    /// Oldest first, after `after` (a seq): what exports stream.
    OldestFirst { after: i64 },
}

const COLUMNS: &str = "id, seq, occurred_at, action, outcome, actor_type, actor_id, actor_email, ip, \
     user_agent, request_id, app_version, target_type, target_id, changes, hash, environment";

/// Up to `limit` events, or fewer when they reach `sql::PAGE_BYTES` (events
/// carry diffs of records up to a request body each); the
/// flag says the page was cut there (more may follow).
pub async fn list(
    tx: &mut ReadTx,
    tenant_id: &str,
    filter: &AuditFilter,
    page: Page,
    limit: i64,
) -> Result<(Vec<AuditEvent>, bool), AuditError> {
    let mut sql = Sql::new(
        format!("SELECT {COLUMNS} FROM audit_events WHERE tenant_id = $1"),
        vec![tenant_id.to_owned()],
    );
    filter.push_sql(&mut sql);
    let (position, order) = match page {
        Page::NewestFirst { before } => (before.map(|s| ("<", s)), "DESC"),
        Page::OldestFirst { after } => (Some((">", after)), "ASC"),
    };
    if let Some((cmp, seq)) = position {
        sql.push(&format!(" AND seq {cmp} {seq}"));
    }
    sql.push(&format!(" ORDER BY seq {order} LIMIT {limit}"));
    let (rows, cut) = sql
        .fetch_within(tx.conn(), crate::store::sql::PAGE_BYTES)
        .await?;
    let events = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
    Ok((events, cut))
}

fn event_from_row(row: &db::Row) -> Result<AuditEvent, AuditError> {
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
        environment: row.try_get("environment")?,
        target: target_type.map(|t| serde_json::json!({"type": t, "id": target_id})),
        changes: changes
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("audit changes: {e}")))?,
        hash: row.try_get("hash")?,
    })
}
