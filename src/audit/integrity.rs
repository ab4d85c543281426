//! Signed checkpoints and verification of the chain (AUD-7).
//!
//! The hash chain alone catches edits made without recomputing hashes;
//! someone with database access could recompute them. Checkpoints close
//! that gap: every so often the head `(tenant, seq, hash, time)` is signed
//! with an Ed25519 key derived from the master key (which the database does
//! not hold), so a rewritten or truncated chain no longer matches a
//! signature. [`verify`] walks a tenant's chain from its anchor and names the
//! first sequence number at which anything was modified, deleted, inserted
//! or reordered.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::Row;

use super::chain::{self, Chained, GENESIS, Hash, checkpoint_message, from_hex, to_hex};
use crate::store::{Store, StoreError};
use crate::tenancy::{self, TenantScope};

/// Signs the current head of every tenant whose trail moved since its last
/// checkpoint; returns how many checkpoints were written.
pub async fn checkpoint_all(store: &Store, key: &SigningKey) -> Result<usize, StoreError> {
    let mut written = 0;
    for scope in tenancy::all_scopes(store).await? {
        if checkpoint(store, &scope, key).await? {
            written += 1;
        }
    }
    Ok(written)
}

async fn checkpoint(
    store: &Store,
    scope: &TenantScope,
    key: &SigningKey,
) -> Result<bool, StoreError> {
    let (seq, head, last): (i64, Option<String>, Option<i64>) = {
        let mut tx = store.read(scope).await?;
        let row = sqlx::query(
            "SELECT s.audit_seq, s.audit_head, \
             (SELECT MAX(seq) FROM audit_checkpoints c WHERE c.tenant_id = s.tenant_id) AS last \
             FROM tenant_sequences s WHERE s.tenant_id = $1",
        )
        .bind(scope.id_str())
        .fetch_optional(tx.conn())
        .await?;
        match row {
            Some(row) => (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
            None => return Ok(false),
        }
    };
    let Some(head) = head else {
        return Ok(false);
    };
    if last.is_some_and(|last| last >= seq) {
        return Ok(false);
    }
    let signed_at = crate::clock::now();
    let message = checkpoint_message(scope.id_str(), seq, &head, &signed_at);
    let signature = to_hex(&key.sign(message.as_bytes()).to_bytes());
    let tenant = scope.id_str().to_owned();
    store
        .append_internal(Some(scope), move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (tenant_id, seq, hash, signed_at, signature) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&tenant)
                .bind(seq)
                .bind(&head)
                .bind(&signed_at)
                .bind(&signature)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await?;
    Ok(true)
}

/// The outcome of walking one tenant's trail.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub tenant_id: String,
    pub ok: bool,
    /// The first sequence number covered (after the retention anchor).
    pub first_seq: i64,
    pub events_checked: i64,
    pub checkpoints_checked: i64,
    /// Where the trail stops being trustworthy, when it does.
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

struct Checkpoint {
    hash: String,
}

/// Walks `scope`'s chain and checks it against the signed checkpoints.
pub async fn verify(
    store: &Store,
    scope: &TenantScope,
    key: &VerifyingKey,
) -> Result<VerifyReport, StoreError> {
    let tenant = scope.id_str();
    let mut tx = store.read(scope).await?;
    let row = sqlx::query(
        "SELECT audit_seq, audit_head, audit_anchor_seq, audit_anchor_hash \
         FROM tenant_sequences WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(tx.conn())
    .await?;
    let audit_seq: i64 = row.try_get(0)?;
    let head: Option<String> = row.try_get(1)?;
    let anchor_seq: i64 = row.try_get(2)?;
    let anchor_hash: Option<String> = row.try_get(3)?;
    let mut report = VerifyReport {
        tenant_id: tenant.to_owned(),
        ok: true,
        first_seq: anchor_seq + 1,
        events_checked: 0,
        checkpoints_checked: 0,
        first_bad_seq: None,
        problem: None,
    };
    let fail = |mut report: VerifyReport, seq: i64, problem: String| {
        report.ok = false;
        report.first_bad_seq = Some(seq);
        report.problem = Some(problem);
        Ok(report)
    };

    // Checkpoints first: a forged one must not vouch for anything.
    let rows = sqlx::query(
        "SELECT seq, hash, signed_at, signature FROM audit_checkpoints \
         WHERE tenant_id = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(tenant)
    .bind(anchor_seq)
    .fetch_all(tx.conn())
    .await?;
    let mut checkpoints = BTreeMap::new();
    for row in &rows {
        let seq: i64 = row.try_get(0)?;
        let hash: String = row.try_get(1)?;
        let signed_at: String = row.try_get(2)?;
        let signature: String = row.try_get(3)?;
        let message = checkpoint_message(tenant, seq, &hash, &signed_at);
        let valid = decode_signature(&signature)
            .is_some_and(|sig| key.verify(message.as_bytes(), &sig).is_ok());
        if !valid {
            return fail(
                report,
                seq,
                format!("the checkpoint at seq {seq} has an invalid signature"),
            );
        }
        checkpoints.insert(seq, Checkpoint { hash });
    }
    report.checkpoints_checked = checkpoints.len() as i64;

    let mut prev: Hash = match anchor_hash.as_deref() {
        Some(hex) => from_hex(hex).ok_or_else(|| StoreError::Corrupt("bad audit anchor".into()))?,
        None => GENESIS,
    };
    let mut expected = anchor_seq + 1;
    let mut events = sqlx::query(
        "SELECT id, seq, occurred_at, action, outcome, actor_type, actor_id, actor_email, ip, \
         user_agent, request_id, app_version, target_type, target_id, changes, prev_hash, hash \
         FROM audit_events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(tenant)
    .bind(anchor_seq)
    .fetch(tx.conn());
    while let Some(row) = events.try_next().await? {
        let seq: i64 = row.try_get(1)?;
        if seq != expected {
            return fail(
                report,
                expected,
                format!(
                    "event {expected} is missing: the trail jumps from {} to {seq}",
                    expected - 1
                ),
            );
        }
        let stored_prev: Option<&str> = row.try_get(15)?;
        if stored_prev != Some(to_hex(&prev).as_str()) {
            return fail(
                report,
                seq,
                format!(
                    "event {seq} does not follow event {}: events were deleted, inserted or reordered",
                    seq - 1
                ),
            );
        }
        let event = Chained {
            id: row.try_get(0)?,
            tenant_id: tenant,
            seq,
            occurred_at: row.try_get(2)?,
            action: row.try_get(3)?,
            outcome: row.try_get(4)?,
            actor_type: row.try_get(5)?,
            actor_id: row.try_get(6)?,
            actor_email: row.try_get(7)?,
            ip: row.try_get(8)?,
            user_agent: row.try_get(9)?,
            request_id: row.try_get(10)?,
            app_version: row.try_get(11)?,
            target_type: row.try_get(12)?,
            target_id: row.try_get(13)?,
            changes: row.try_get(14)?,
        };
        let computed = event.hash(&prev);
        let stored: Option<&str> = row.try_get(16)?;
        let computed_hex = to_hex(&computed);
        if stored != Some(computed_hex.as_str()) {
            return fail(
                report,
                seq,
                format!("event {seq} was modified after it was written"),
            );
        }
        if let Some(checkpoint) = checkpoints.get(&seq)
            && checkpoint.hash != computed_hex
        {
            return fail(
                report,
                seq,
                format!("event {seq} differs from its signed checkpoint: the chain was rewritten"),
            );
        }
        prev = computed;
        expected += 1;
        report.events_checked += 1;
    }
    drop(events);
    let last = expected - 1;
    if let Some((&seq, _)) = checkpoints.range(last + 1..).next() {
        return fail(
            report,
            last + 1,
            format!(
                "a signed checkpoint covers seq {seq}, but the trail ends at {last}: events were deleted"
            ),
        );
    }
    if audit_seq > last {
        return fail(
            report,
            last + 1,
            format!(
                "the trail should reach seq {audit_seq} but ends at {last}: events were deleted"
            ),
        );
    }
    if last > anchor_seq && audit_seq == last && head.as_deref() != Some(to_hex(&prev).as_str()) {
        return fail(
            report,
            last,
            format!("event {last} is not the recorded head of the chain"),
        );
    }
    Ok(report)
}

fn decode_signature(hex: &str) -> Option<Signature> {
    if hex.len() != 128 {
        return None;
    }
    let (a, b) = hex.split_at(64);
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&chain::from_hex(a)?);
    bytes[32..].copy_from_slice(&chain::from_hex(b)?);
    Some(Signature::from_bytes(&bytes))
}
