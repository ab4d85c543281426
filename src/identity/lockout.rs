//! IAM-6: guessing passwords is slow, a lock is temporary, and neither
//! tells whether an account exists.
//!
//! Failed logins are counted per account — a SHA-256 of the tenant slug
//! and the e-mail address as typed, so an account that does not exist (or
//! a tenant that does not) is counted, delayed and locked exactly like one
//! that does, and no address is stored. After a failure the next attempt
//! for that account must wait ([`DELAYS`]: 1, 3, 5, then 10 s, Kanidm's
//! softlock); an attempt that comes sooner is refused before any password
//! is checked, so guesses in parallel gain nothing. [`LOCK_AFTER`]
//! failures within [`WINDOW`] lock the account for [`LOCK_FOR`]. A device
//! the user logged in from before is counted on its own key instead
//! (`devices`), so a real user gets in while their account is under attack
//! from elsewhere. Unlocked by time, by an admin, or by a completed
//! password reset. Counters live in `login_failures`, shared by every app
//! server and updated atomically, so racing guesses on several nodes all
//! count.

use sha2::{Digest, Sha256};

use super::IdentityError;
use crate::store::db;
use crate::store::{Backend, Store, StoreError};

/// The schema migration that brought the counters (and devices).
pub const SCHEMA: i64 = 12;
/// The wait before the next attempt after 1, 2, 3, 4 and more failures.
pub const DELAYS: [i64; 5] = [1, 3, 5, 10, 10];
/// Failures within [`WINDOW`] that lock the account.
pub const LOCK_AFTER: i64 = 10;
/// How long a lock lasts.
pub const LOCK_FOR: time::Duration = time::Duration::minutes(15);
/// Failures older than this (since the last one) are forgotten.
pub const WINDOW: time::Duration = time::Duration::minutes(15);

/// The counter of an account, whether or not it exists.
pub fn account_key(tenant: &str, email: &str) -> String {
    key(&format!(
        "account/{}/{}",
        tenant.trim().to_lowercase(),
        email.trim().to_lowercase()
    ))
}

/// The counter of a user of `scope` (by the tenant's slug, as logins type
/// it).
pub async fn account_key_of(
    store: &Store,
    scope: &crate::context::TenantScope,
    email: &str,
) -> Result<String, StoreError> {
    let mut tx = store.read(scope).await?;
    let slug: String = db::query_scalar("SELECT slug FROM tenants WHERE id = $1")
        .bind(scope.id_str())
        .fetch_one(tx.conn())
        .await?;
    Ok(account_key(&slug, email))
}

/// The counter of a device the user logged in from before.
pub fn device_key(device_id: &str) -> String {
    key(&format!("device/{device_id}"))
}

fn key(text: &str) -> String {
    let digest = Sha256::digest(format!("strongroom/v1/login-failures/{text}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a failure did to the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub failures: i64,
    /// This failure locked the account.
    pub locked_now: bool,
}

/// Refuses an attempt that comes too soon after a failure, or while the
/// key is locked, with how long to wait. Otherwise says whether the key
/// has failures on record (for a success to clear).
pub async fn gate(store: &Store, key: &str) -> Result<bool, IdentityError> {
    let mut tx = store.read_unscoped().await?;
    let row = db::query(
        "SELECT failures, last_failure_at, locked_until FROM login_failures WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let failures: i64 = row.try_get(0)?;
    let last: String = row.try_get(1)?;
    let locked: Option<String> = row.try_get(2)?;
    let now = time::OffsetDateTime::now_utc();
    // Rounded up: a client that waits as long as told is not refused again.
    let wait = |until: time::OffsetDateTime| (until - now).as_seconds_f64().ceil().max(1.0) as u64;
    if let Some(until) = locked.as_deref().and_then(crate::clock::parse_rfc3339)
        && until > now
    {
        return Err(IdentityError::LockedOut {
            retry_after: wait(until),
            locked: true,
        });
    }
    let Some(last) = crate::clock::parse_rfc3339(&last) else {
        return Ok(true);
    };
    if now - last > WINDOW {
        return Ok(true);
    }
    let index = usize::try_from(failures.clamp(1, DELAYS.len() as i64) - 1).unwrap_or(0);
    let next = last + time::Duration::seconds(DELAYS[index]);
    if next > now {
        return Err(IdentityError::LockedOut {
            retry_after: wait(next),
            locked: false,
        });
    }
    Ok(true)
}

/// Counts a failure for `key`, in one statement (racing failures on
/// several nodes all count); locks it at the [`LOCK_AFTER`]th.
pub async fn failed(store: &Store, key: &str) -> Result<Counted, StoreError> {
    let now = time::OffsetDateTime::now_utc();
    let (now_text, forget_before, lock_until) = (
        crate::clock::format(now),
        crate::clock::format(now - WINDOW),
        crate::clock::format(now + LOCK_FOR),
    );
    let key = key.to_owned();
    let greatest = match store.backend() {
        Backend::Postgres => "GREATEST",
        Backend::Sqlite => "MAX",
    };
    store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                // A failure after the window starts the count again; the
                // lock is set by the statement that reaches the threshold.
                let row = db::query(format!(
                    "INSERT INTO login_failures (key, failures, last_failure_at, locked_until) \
                     VALUES ($1, 1, $2, NULL) \
                     ON CONFLICT (key) DO UPDATE SET \
                     failures = CASE WHEN login_failures.last_failure_at < $3 THEN 1 \
                                     ELSE login_failures.failures + 1 END, \
                     last_failure_at = {greatest}(login_failures.last_failure_at, excluded.last_failure_at), \
                     locked_until = CASE \
                         WHEN login_failures.last_failure_at >= $3 \
                              AND login_failures.failures + 1 = $4 THEN $5 \
                         WHEN login_failures.last_failure_at < $3 THEN NULL \
                         ELSE login_failures.locked_until END \
                     RETURNING failures, CASE WHEN locked_until = $5 THEN 1 ELSE 0 END"
                ))
                .bind(key)
                .bind(now_text)
                .bind(forget_before)
                .bind(LOCK_AFTER)
                .bind(lock_until)
                .fetch_one(conn)
                .await?;
                Ok(Counted {
                    failures: row.try_get(0)?,
                    locked_now: row.try_get::<i64, _>(1)? == 1,
                })
            })
        })
        .await
}

/// Forgets `key`'s failures and lock: a login that succeeded on that key,
/// an admin's unlock, a completed password reset.
pub async fn clear(store: &Store, key: &str) -> Result<(), StoreError> {
    let key = key.to_owned();
    store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                db::query("DELETE FROM login_failures WHERE key = $1")
                    .bind(key)
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .await
}

/// An admin lifts a user's lock (and forgets their failures); audited.
/// Says until when the account was locked, if it was.
pub async fn unlock(
    store: &Store,
    permit: &crate::context::Permit,
    meta: &crate::context::RequestMeta,
    user_id: &str,
) -> Result<Option<String>, IdentityError> {
    let user = super::get_user(store, permit, user_id).await?;
    let key = account_key_of(store, permit.scope(), &user.email).await?;
    let was = locked_until(store, &key).await?;
    clear(store, &key).await?;
    store
        .write(permit, meta, "user.unlock", move |tx| {
            Box::pin(async move {
                tx.set_target("user", user.id);
                Ok::<_, IdentityError>(())
            })
        })
        .await?;
    Ok(was)
}

/// Whether `key` is locked now, and until when.
pub async fn locked_until(store: &Store, key: &str) -> Result<Option<String>, StoreError> {
    let mut tx = store.read_unscoped().await?;
    let until: Option<Option<String>> =
        db::query_scalar("SELECT locked_until FROM login_failures WHERE key = $1")
            .bind(key)
            .fetch_optional(tx.conn())
            .await?;
    let now = time::OffsetDateTime::now_utc();
    Ok(until
        .flatten()
        .filter(|until| crate::clock::parse_rfc3339(until).is_some_and(|until| until > now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_do_not_carry_the_address_and_ignore_case() {
        let k = account_key("Acme", " Anna@Acme.test ");
        assert_eq!(k, account_key("acme", "anna@acme.test"));
        assert_eq!(k.len(), 64);
        assert!(!k.contains("anna"));
        assert_ne!(k, account_key("acme", "bob@acme.test"));
        assert_ne!(device_key("x"), account_key("x", ""));
    }
}
