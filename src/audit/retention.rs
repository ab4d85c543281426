//! Retention (AUD-3): events and access-log rows older than the tenant's
//! `audit_retention_days` are deleted by a scheduled job. The chain stays
//! verifiable: the seq and hash of the newest deleted event become the
//! tenant's anchor, from which `verify` continues. The purge goes through
//! the write path, so it is journaled and is itself an audit event.

use serde::Serialize;
use serde_json::json;

use super::RequestMeta;
use super::query::AuditError;
use crate::context::Permit;
use crate::context::TenantScope;
use crate::store::db;
use crate::store::{Change, JournalOp, Store};
use crate::tenancy;

pub const JOB: &str = "audit.retention";

/// The migration after which PostgreSQL lets the job see anonymous rows.
const ANONYMOUS_ROWS_SCHEMA: i64 = 8;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RetentionSummary {
    pub tenants_purged: usize,
    pub events_deleted: i64,
    pub access_rows_deleted: i64,
    pub anonymous_rows_deleted: i64,
}

/// Deletes anonymous access-log rows older than `days`. They belong to no
/// tenant, so no tenant's trail records it; the job's heartbeat does.
async fn purge_anonymous(store: &Store, days: u32) -> Result<i64, AuditError> {
    if !store.schema_has(ANONYMOUS_ROWS_SCHEMA) {
        return Ok(0);
    }
    let cutoff = crate::clock::in_seconds(-i64::from(days) * 86_400);
    let deleted = store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                let done = db::query(
                    "DELETE FROM access_log WHERE tenant_id IS NULL AND occurred_at < $1",
                )
                .bind(cutoff)
                .execute(conn)
                .await?;
                Ok(done.rows_affected())
            })
        })
        .await?;
    Ok(i64::try_from(deleted).unwrap_or(i64::MAX))
}

/// Applies every tenant's retention period once, and `anonymous_days` to
/// the access-log rows of requests nobody was authenticated for (NET-5:
/// a flood of them must not fill the log forever).
pub async fn apply_retention(
    store: &Store,
    anonymous_days: u32,
) -> Result<RetentionSummary, AuditError> {
    let mut summary = RetentionSummary {
        anonymous_rows_deleted: purge_anonymous(store, anonymous_days).await?,
        ..RetentionSummary::default()
    };
    for scope in tenancy::all_scopes(store).await? {
        let (events, rows) = purge_tenant(store, &scope).await?;
        if events + rows > 0 {
            summary.tenants_purged += 1;
        }
        summary.events_deleted += events;
        summary.access_rows_deleted += rows;
    }
    Ok(summary)
}

async fn purge_tenant(store: &Store, scope: &TenantScope) -> Result<(i64, i64), AuditError> {
    // A cheap look first: most runs find nothing, and then write nothing.
    let (cutoff, expired) = {
        let mut tx = store.read(scope).await?;
        let days: i64 = db::query_scalar(
            "SELECT audit_retention_days FROM tenant_settings WHERE tenant_id = $1",
        )
        .bind(scope.id_str())
        .fetch_one(tx.conn())
        .await?;
        let cutoff = crate::clock::in_seconds(-days * 86_400);
        let expired: i64 = db::query_scalar(
            "SELECT (SELECT COUNT(*) FROM audit_events WHERE tenant_id = $1 AND occurred_at < $2) \
             + (SELECT COUNT(*) FROM access_log WHERE tenant_id = $1 AND occurred_at < $2)",
        )
        .bind(scope.id_str())
        .bind(&cutoff)
        .fetch_one(tx.conn())
        .await?;
        (cutoff, expired)
    };
    if expired == 0 {
        return Ok((0, 0));
    }
    let permit = Permit::system(scope.clone(), JOB);
    let meta = RequestMeta {
        request_id: uuid::Uuid::now_v7().to_string(),
        ip: None,
        user_agent: Some(format!("strongroom/{}", crate::VERSION)),
    };
    store
        .write(&permit, &meta, JOB, move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let newest_expired = db::query(
                    "SELECT seq, hash FROM audit_events WHERE tenant_id = $1 AND occurred_at < $2 \
                     ORDER BY seq DESC LIMIT 1",
                )
                .bind(&tenant)
                .bind(&cutoff)
                .fetch_optional(tx.conn())
                .await?;
                let mut events = 0;
                let mut anchor = None;
                if let Some(row) = newest_expired {
                    let seq: i64 = row.try_get(0)?;
                    let hash: Option<String> = row.try_get(1)?;
                    events = db::query("DELETE FROM audit_events WHERE tenant_id = $1 AND seq <= $2")
                        .bind(&tenant)
                        .bind(seq)
                        .execute(tx.conn())
                        .await?
                        .rows_affected() as i64;
                    db::query("DELETE FROM audit_checkpoints WHERE tenant_id = $1 AND seq <= $2")
                        .bind(&tenant)
                        .bind(seq)
                        .execute(tx.conn())
                        .await?;
                    db::query(
                        "UPDATE tenant_sequences SET audit_anchor_seq = $1, audit_anchor_hash = $2 \
                         WHERE tenant_id = $3 AND audit_anchor_seq < $1",
                    )
                    .bind(seq)
                    .bind(hash.as_deref())
                    .bind(&tenant)
                    .execute(tx.conn())
                    .await?;
                    anchor = Some((seq, hash));
                }
                let rows = db::query("DELETE FROM access_log WHERE tenant_id = $1 AND occurred_at < $2")
                    .bind(&tenant)
                    .bind(&cutoff)
                    .execute(tx.conn())
                    .await?
                    .rows_affected() as i64;
                let after = json!({
                    "cutoff": cutoff, "events_deleted": events, "access_rows_deleted": rows,
                    "anchor_seq": anchor.as_ref().map(|a| a.0), "anchor_hash": anchor.and_then(|a| a.1),
                });
                tx.record(Change {
                    entity: "audit_retention",
                    entity_id: tenant.clone(),
                    op: JournalOp::Delete,
                    before: None,
                    after: Some(after),
                    sensitive: vec![],
                    diff_of: None,
                });
                tx.set_target("tenant", tenant);
                Ok::<_, AuditError>((events, rows))
            })
        })
        .await
}
