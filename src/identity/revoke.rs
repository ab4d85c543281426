//! Ending sessions in a write job: one, all of a user's, or all but one.
//! Every way a session ends (logout, revocation, a disabled or demoted
//! user, a password change or reset, "this wasn't me") comes through here,
//! so each ending is journaled alike and ends cached session checks. A
//! password change or reset also ends every device's trust (IAM-3) here.

use serde_json::json;

use super::IdentityError;
use crate::store::db;
use crate::store::{Change, JournalOp, WriteTx};

pub(super) async fn revoke_session(
    tx: &mut WriteTx,
    session_id: &str,
    reason: &str,
) -> Result<(), IdentityError> {
    let now = crate::clock::now();
    db::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
         WHERE tenant_id = $3 AND id = $4 AND revoked_at IS NULL",
    )
    .bind(&now)
    .bind(reason)
    .bind(tx.scope().id_str().to_owned())
    .bind(session_id)
    .execute(tx.conn())
    .await?;
    tx.record(Change {
        entity: "session",
        entity_id: session_id.to_owned(),
        op: JournalOp::Update,
        before: None,
        after: Some(json!({"revoked_at": now, "revoked_reason": reason})),
        sensitive: vec![],
        diff_of: None,
    });
    tx.set_target("session", session_id.to_owned());
    Ok(())
}

/// Revokes every live session of a user (disabled account).
pub(super) async fn revoke_all(
    tx: &mut WriteTx,
    user_id: &str,
    reason: &str,
) -> Result<(), IdentityError> {
    revoke_all_but(tx, user_id, None, reason).await.map(|_| ())
}

/// Revokes every live session of a user except `keep`; how many.
pub(super) async fn revoke_all_but(
    tx: &mut WriteTx,
    user_id: &str,
    keep: Option<&str>,
    reason: &str,
) -> Result<usize, IdentityError> {
    let ids: Vec<String> = db::query_scalar(
        "SELECT id FROM sessions WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(tx.scope().id_str().to_owned())
    .bind(user_id)
    .fetch_all(tx.conn())
    .await?;
    let mut ended = 0;
    for id in ids.iter().filter(|id| Some(id.as_str()) != keep) {
        revoke_session(tx, id, reason).await?;
        ended += 1;
    }
    Ok(ended)
}

/// Ends the trust of every device of a user, in `tx` (a password change
/// or reset).
pub(super) async fn forget_trust(
    tx: &mut WriteTx,
    user_id: &str,
    schema_has_trust: bool,
) -> Result<(), IdentityError> {
    if !schema_has_trust {
        return Ok(());
    }
    // Journaled device by device, so no restore brings the trust back.
    let ended: Vec<String> = db::query_scalar(
        "UPDATE devices SET mfa_trusted_until = NULL WHERE tenant_id = $1 AND user_id = $2 \
         AND mfa_trusted_until IS NOT NULL RETURNING id",
    )
    .bind(tx.scope().id_str().to_owned())
    .bind(user_id)
    .fetch_all(tx.conn())
    .await?;
    for id in ended {
        tx.record(Change {
            entity: "device",
            entity_id: id,
            op: JournalOp::Update,
            before: None,
            after: Some(serde_json::json!({"mfa_trusted_until": null})),
            sensitive: Vec::new(),
            diff_of: None,
        });
    }
    Ok(())
}
