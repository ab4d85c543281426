//! Passwords after the first (IAM-2): staff never set or see one.
//!
//! * **Reset by link.** `request_reset` answers the same, at once, whether
//!   or not the tenant and account exist: the lookup, the single-use token
//!   (30 minutes, stored as its hash) and its mail happen after the answer.
//!   `reset` spends the token with a guarded update, sets the new password,
//!   ends every session of the user and mails them that it changed.
//! * **Change.** `change` needs the current password; it ends every other
//!   session and clears a pending forced change.
//! * **Admin reset.** `admin_reset` mails the user a random temporary
//!   password the admin never sees, ends the user's sessions, and marks the
//!   account: until the user changes it, their sessions may only change the
//!   password (`Principal::must_change_password`, checked by the extractor).

use secrecy::{ExposeSecret, SecretString};

use super::post::Post;
use super::revoke::revoke_all_but;
use super::tokens::{OpaqueToken, TokenKind};
use super::{Email, IdentityError, password};
use crate::access::Principal;
use crate::context::{Actor, Permit, RequestMeta, TenantScope};
use crate::mail::{self, Mail};
use crate::store::db;
use crate::store::{Change, JournalOp, Store, WriteTx};
use crate::tenancy;

/// How long a reset link works.
pub const RESET_TTL_MINUTES: i64 = 30;

/// Starts a reset for `email` at `tenant`, if both exist and the account is
/// active, in the background: the caller answers at once, the same way in
/// every case. Refused only when mail is off (no link could reach anyone).
pub fn request_reset(
    store: &Store,
    post: &Post,
    tenant: &str,
    email: &str,
    meta: &RequestMeta,
) -> Result<(), IdentityError> {
    if !post.mailer.is_configured() || !store.schema_has(mail::SCHEMA) {
        return Err(IdentityError::MailOff);
    }
    let (store, post, meta) = (store.clone(), post.clone(), meta.clone());
    let (tenant, email) = (tenant.to_owned(), email.to_owned());
    tokio::spawn(async move {
        if let Err(e) = issue_reset(&store, &post, &tenant, &email, &meta).await {
            tracing::error!(error = %e, "could not issue a password reset");
        }
    });
    Ok(())
}

async fn issue_reset(
    store: &Store,
    post: &Post,
    tenant: &str,
    email: &str,
    meta: &RequestMeta,
) -> Result<(), IdentityError> {
    let (Some(scope), Ok(email)) = (
        tenancy::find_active_by_slug(store, tenant).await?,
        Email::parse(email),
    ) else {
        tracing::info!(
            event = "auth.password.reset_request",
            outcome = "unknown",
            "reset for no account"
        );
        return Ok(());
    };
    let user_id: Option<String> = {
        let mut tx = store.read(&scope).await?;
        db::query_scalar(
            "SELECT id FROM users WHERE tenant_id = $1 AND email = $2 AND status = 'active'",
        )
        .bind(scope.id_str())
        .bind(email.as_str())
        .fetch_optional(tx.conn())
        .await?
    };
    let Some(user_id) = user_id else {
        tracing::info!(
            event = "auth.password.reset_request",
            outcome = "unknown",
            "reset for no account"
        );
        return Ok(());
    };
    let letterhead = mail::letterhead(store, &scope).await?;
    let link = NewLink::generate(&scope, post);
    let permit = Permit::authentication(
        scope.clone(),
        Actor::user(user_id.clone(), email.as_str().to_owned()),
    );
    let post = post.clone();
    store
        .write(&permit, meta, "auth.password.reset_request", move |tx| {
            Box::pin(async move {
                link.issue(tx, &post, &letterhead, &user_id, email.as_str())
                    .await?;
                tx.set_target("user", user_id);
                Ok::<_, IdentityError>(())
            })
        })
        .await
}

/// A reset link about to be issued: its token is mailed, only its hash is
/// stored.
pub(super) struct NewLink {
    token: OpaqueToken,
    link: String,
    expires_at: String,
}

impl NewLink {
    pub(super) fn generate(scope: &TenantScope, post: &Post) -> NewLink {
        let token = OpaqueToken::generate(TokenKind::PasswordReset, scope.tenant_id());
        NewLink {
            link: post.mailer.link("/password-reset", &token.reveal()),
            token,
            expires_at: crate::clock::in_seconds(RESET_TTL_MINUTES * 60),
        }
    }

    /// Stores the link for `user_id` (ending any earlier one) and queues
    /// its mail, in `tx`.
    pub(super) async fn issue(
        &self,
        tx: &mut WriteTx,
        post: &Post,
        letterhead: &mail::Letterhead,
        user_id: &str,
        email: &str,
    ) -> Result<(), IdentityError> {
        let tenant = tx.scope().id_str().to_owned();
        let now = crate::clock::now();
        // One link at a time: a new one ends the earlier ones.
        db::query(
            "UPDATE password_resets SET used_at = $1 \
             WHERE tenant_id = $2 AND user_id = $3 AND used_at IS NULL",
        )
        .bind(&now)
        .bind(&tenant)
        .bind(user_id)
        .execute(tx.conn())
        .await?;
        let id = uuid::Uuid::now_v7().to_string();
        db::query(
            "INSERT INTO password_resets (id, tenant_id, user_id, token_hash, expires_at, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&tenant)
        .bind(user_id)
        .bind(self.token.hash())
        .bind(&self.expires_at)
        .bind(&now)
        .execute(tx.conn())
        .await?;
        tx.record(Change {
            entity: "password_reset",
            entity_id: id,
            op: JournalOp::Insert,
            before: None,
            after: Some(serde_json::json!({
                "user_id": user_id, "token_hash": self.token.hash(),
                "expires_at": self.expires_at, "created_at": now,
            })),
            sensitive: vec!["token_hash".into()],
            diff_of: None,
        });
        mail::enqueue(
            tx,
            &post.vault.in_write(),
            letterhead,
            Mail {
                to: email.to_owned(),
                template: "password_reset",
                values: vec![
                    ("email", email.to_owned()),
                    ("link", self.link.clone()),
                    ("expires_at", self.expires_at.clone()),
                ],
            },
        )
        .await?;
        Ok(())
    }
}

/// Sets a new password with a reset link's token; every session of the
/// user ends.
pub async fn reset(
    store: &Store,
    post: &Post,
    token: &str,
    new_password: SecretString,
    meta: &RequestMeta,
) -> Result<(), IdentityError> {
    let token =
        OpaqueToken::parse(TokenKind::PasswordReset, token).ok_or(IdentityError::InvalidToken)?;
    let scope = TenantScope::trusted(token.tenant());
    let hash = token.hash();
    let found = {
        let mut tx = store.read(&scope).await?;
        db::query(
            "SELECT r.id, u.id, u.email FROM password_resets r JOIN users u ON u.id = r.user_id \
             WHERE r.tenant_id = $1 AND r.token_hash = $2 AND r.used_at IS NULL \
             AND r.expires_at > $3 AND u.status = 'active'",
        )
        .bind(scope.id_str())
        .bind(&hash)
        .bind(crate::clock::now())
        .fetch_optional(tx.conn())
        .await?
    };
    let row = found.ok_or(IdentityError::InvalidToken)?;
    let (reset_id, user_id, email): (String, String, String) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    password::check_policy(&new_password, &[&email])?;
    let password_hash = password::hash(new_password).await?;
    let letterhead = post.letterhead(store, &scope).await?;
    let permit = Permit::authentication(scope.clone(), Actor::user(user_id.clone(), email.clone()));
    let (post, mailed) = (post.clone(), email.clone());
    let trust = store.schema_has(super::mfa::passkeys::SCHEMA);
    store
        .write(&permit, meta, "auth.password.reset", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let now = crate::clock::now();
                // Used once: the statement itself says whether this use won
                // (the user must still be active).
                let used = db::query(
                    "UPDATE password_resets SET used_at = $1 WHERE tenant_id = $2 \
                     AND id = $3 AND used_at IS NULL AND expires_at > $1 \
                     AND user_id IN (SELECT id FROM users WHERE tenant_id = $2 \
                     AND status = 'active')",
                )
                .bind(&now)
                .bind(&tenant)
                .bind(&reset_id)
                .execute(tx.conn())
                .await?;
                if used.rows_affected() != 1 {
                    return Err(IdentityError::InvalidToken);
                }
                tx.record(Change {
                    entity: "password_reset",
                    entity_id: reset_id,
                    op: JournalOp::Update,
                    before: None,
                    after: Some(serde_json::json!({"used_at": now})),
                    sensitive: vec![],
                    diff_of: None,
                });
                set_password(tx, &user_id, &password_hash, false).await?;
                revoke_all_but(tx, &user_id, None, "password_reset").await?;
                super::revoke::forget_trust(tx, &user_id, trust).await?;
                notify_changed(tx, &post, letterhead.as_ref(), &mailed).await?;
                tx.set_target("user", user_id);
                Ok(())
            })
        })
        .await?;
    // Whoever proved the mailbox is the user: their lock is lifted (IAM-6).
    let key = super::lockout::account_key_of(store, &scope, &email).await?;
    super::lockout::clear(store, &key).await?;
    Ok(())
}

/// The caller changes their own password, proving the current one; every
/// other session of theirs ends.
pub async fn change(
    store: &Store,
    post: &Post,
    principal: &Principal,
    current: SecretString,
    new_password: SecretString,
    meta: &RequestMeta,
) -> Result<(), IdentityError> {
    super::mfa::require_recent(principal)?;
    let stored: Option<String> = {
        let mut tx = store.read(principal.scope()).await?;
        db::query_scalar("SELECT password_hash FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(principal.scope().id_str())
            .bind(&principal.user_id)
            .fetch_optional(tx.conn())
            .await?
            .flatten()
    };
    if !password::verify(current.clone(), stored).await? {
        return Err(IdentityError::InvalidCredentials);
    }
    if new_password.expose_secret() == current.expose_secret() {
        return Err(IdentityError::WeakPassword(
            "choose a password other than the current one".into(),
        ));
    }
    password::check_policy(&new_password, &[&principal.email])?;
    let password_hash = password::hash(new_password).await?;
    let letterhead = post.letterhead(store, principal.scope()).await?;
    let (user_id, keep, email) = (
        principal.user_id.clone(),
        principal.session_id.clone(),
        principal.email.clone(),
    );
    let post = post.clone();
    let trust = store.schema_has(super::mfa::passkeys::SCHEMA);
    store
        .write(
            &principal.own_permit(),
            meta,
            "auth.password.change",
            move |tx| {
                Box::pin(async move {
                    set_password(tx, &user_id, &password_hash, false).await?;
                    revoke_all_but(tx, &user_id, Some(&keep), "password_changed").await?;
                    super::revoke::forget_trust(tx, &user_id, trust).await?;
                    notify_changed(tx, &post, letterhead.as_ref(), &email).await?;
                    tx.set_target("user", user_id);
                    Ok(())
                })
            },
        )
        .await
}

/// An admin resets a user's password: a random temporary one goes by mail
/// to the user alone, every session of theirs ends, and they must change it
/// before anything else works.
pub async fn admin_reset(
    store: &Store,
    post: &Post,
    permit: &Permit,
    meta: &RequestMeta,
    user_id: &str,
) -> Result<(), IdentityError> {
    if !post.mailer.is_configured() || !store.schema_has(mail::SCHEMA) {
        return Err(IdentityError::MailOff);
    }
    let user = super::get_user(store, permit, user_id).await?;
    if user.status != "active" {
        return Err(IdentityError::NotActive);
    }
    let temporary = temporary_password();
    let password_hash = password::hash(temporary.clone()).await?;
    let letterhead = mail::letterhead(store, permit.scope()).await?;
    let vault = post.vault.in_write();
    let trust = store.schema_has(super::mfa::passkeys::SCHEMA);
    store
        .write(permit, meta, "user.password.reset", move |tx| {
            Box::pin(async move {
                // Re-checked in the write: the user may have gone meanwhile.
                let done = set_password(tx, &user.id, &password_hash, true).await?;
                if done != 1 {
                    return Err(IdentityError::UserNotFound);
                }
                revoke_all_but(tx, &user.id, None, "password_reset_by_admin").await?;
                super::revoke::forget_trust(tx, &user.id, trust).await?;
                mail::enqueue(
                    tx,
                    &vault,
                    &letterhead,
                    Mail {
                        to: user.email.clone(),
                        template: "password_temporary",
                        values: vec![
                            ("email", user.email.clone()),
                            ("password", temporary.expose_secret().to_owned()),
                        ],
                    },
                )
                .await?;
                tx.set_target("user", user.id.clone());
                Ok(())
            })
        })
        .await
}

/// Stores a new password hash for an active user; how many rows changed.
async fn set_password(
    tx: &mut WriteTx,
    user_id: &str,
    password_hash: &str,
    must_change: bool,
) -> Result<u64, IdentityError> {
    let now = crate::clock::now();
    let done = db::query(
        "UPDATE users SET password_hash = $1, password_change_required = $2, updated_at = $3 \
         WHERE tenant_id = $4 AND id = $5 AND status = 'active'",
    )
    .bind(password_hash)
    .bind(i64::from(must_change))
    .bind(&now)
    .bind(tx.scope().id_str().to_owned())
    .bind(user_id)
    .execute(tx.conn())
    .await?;
    tx.record(Change {
        entity: "user",
        entity_id: user_id.to_owned(),
        op: JournalOp::Update,
        before: None,
        after: Some(serde_json::json!({
            "password_hash": password_hash, "password_change_required": must_change,
            "updated_at": now,
        })),
        sensitive: vec!["password_hash".into()],
        diff_of: None,
    });
    Ok(done.rows_affected())
}

/// Tells the user their password changed, when mail is on.
async fn notify_changed(
    tx: &mut WriteTx,
    post: &Post,
    letterhead: Option<&mail::Letterhead>,
    email: &str,
) -> Result<(), IdentityError> {
    let Some(letterhead) = letterhead else {
        return Ok(());
    };
    mail::enqueue(
        tx,
        &post.vault.in_write(),
        letterhead,
        Mail {
            to: email.to_owned(),
            template: "password_changed",
            values: vec![
                ("email", email.to_owned()),
                ("changed_at", crate::clock::now()),
            ],
        },
    )
    .await?;
    Ok(())
}

/// A random password of 20 characters from an alphabet without look-alikes
/// (about 115 bits), grouped for reading it off a mail. Bytes beyond the
/// largest multiple of the alphabet are drawn again, so every character is
/// equally likely.
fn temporary_password() -> SecretString {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789";
    const LENGTH: usize = 20;
    let limit = 256 - 256 % ALPHABET.len();
    let mut out = String::with_capacity(LENGTH + LENGTH / 5);
    let mut taken = 0;
    while taken < LENGTH {
        for byte in crate::crypto::random_bytes::<32>() {
            if usize::from(byte) >= limit || taken == LENGTH {
                continue;
            }
            if taken > 0 && taken % 5 == 0 {
                out.push('-');
            }
            out.push(ALPHABET[usize::from(byte) % ALPHABET.len()] as char);
            taken += 1;
        }
    }
    SecretString::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_passwords_are_random_and_pass_the_policy() {
        let a = temporary_password();
        let b = temporary_password();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 23);
        assert_eq!(a.expose_secret().matches('-').count(), 3);
        password::check_policy(&a, &["anna@acme.test"]).unwrap();
    }
}
