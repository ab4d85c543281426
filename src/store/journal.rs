//! The journal: an after-image of every change, numbered per tenant without
//! gaps, written in the same transaction as the change (BAK-1). Backups ship
//! it; replaying it in `seq` order rebuilds a tenant.

use sqlx::AnyConnection;

use super::StoreError;
use super::write::Change;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalOp {
    Insert,
    Update,
    Delete,
}

impl JournalOp {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalOp::Insert => "insert",
            JournalOp::Update => "update",
            JournalOp::Delete => "delete",
        }
    }
}

pub(super) async fn append(
    conn: &mut AnyConnection,
    tenant_id: &str,
    seq: i64,
    occurred_at: &str,
    change: &Change,
) -> Result<(), StoreError> {
    let after = change.after.as_ref().map(|v| v.to_string());
    sqlx::query(
        "INSERT INTO journal (tenant_id, seq, occurred_at, entity, entity_id, op, after, app_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(tenant_id)
    .bind(seq)
    .bind(occurred_at)
    .bind(change.entity)
    .bind(&change.entity_id)
    .bind(change.op.as_str())
    .bind(after)
    .bind(crate::VERSION)
    .execute(conn)
    .await?;
    Ok(())
}
