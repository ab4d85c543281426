//! The journal: an after-image of every change, numbered per tenant without
//! gaps, written in the same transaction as the change (BAK-1). Backups ship
//! it; replaying it in `seq` order rebuilds a tenant.

use serde_json::Value;

use super::sql::Combined;

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

/// One changed row, as the journal and the audit diff see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub entity: &'static str,
    pub entity_id: String,
    pub op: JournalOp,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// Fields whose values never reach the audit trail in clear (AUD-3).
    pub sensitive: Vec<String>,
    /// When set, the audit diff compares this nested object of the images
    /// (a record's `data`) instead of the whole image.
    pub diff_of: Option<&'static str>,
}

impl Change {
    /// A change of a row with nothing sensitive in it, diffed whole.
    pub fn of(
        entity: &'static str,
        entity_id: impl Into<String>,
        op: JournalOp,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Change {
        Change {
            entity,
            entity_id: entity_id.into(),
            op,
            before,
            after,
            sensitive: Vec::new(),
            diff_of: None,
        }
    }
}

/// Adds the statement that journals `change` as entry `seq` to `batch`;
/// with `images` on SQLite, its image too (the batch's statements run in
/// turn there, so the rows it reads are the job's).
pub(super) fn append(
    batch: &mut Combined,
    tenant_id: &str,
    seq: i64,
    occurred_at: &str,
    change: &Change,
    images: Option<&super::image::Images>,
) {
    let values = [
        batch.param(tenant_id.to_owned()),
        batch.param(seq),
        batch.param(occurred_at.to_owned()),
        batch.param(change.entity),
        batch.param(change.entity_id.clone()),
        batch.param(change.op.as_str()),
        batch.param(change.after.as_ref().map(|v| v.to_string())),
        batch.param(crate::VERSION),
    ];
    let image = images.and_then(|images| images.image_of(change.entity, &values[0], &values[4]));
    match image {
        Some(image) => batch.push(format!(
            "INSERT INTO journal (tenant_id, seq, occurred_at, entity, entity_id, op, after, app_version, rows) \
             VALUES ({}, {image})",
            values.join(", ")
        )),
        None => batch.push(format!(
            "INSERT INTO journal (tenant_id, seq, occurred_at, entity, entity_id, op, after, app_version) \
             VALUES ({})",
            values.join(", ")
        )),
    }
}
