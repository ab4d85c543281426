//! IAM-7: the devices a user logs in from.
//!
//! A successful login hands the client a long-lived device token
//! (`sr_dev_…`, stored as its hash; in cookie mode the `__Host-sr_device`
//! cookie) and presents it again at the next login. A login without a
//! token of the user's is a new device: it is registered and audited
//! (`auth.new_device`, with its user agent and address prefix, an event of
//! its own in the login's write: one commit for both), and — when
//! the user had logged in from another device before — mailed to the user
//! with a "this wasn't me" link. That link (`POST /api/v1/auth/not-me`)
//! ends every session, forgets every device, removes the password and
//! mails a reset link: whoever logged in must now prove the mailbox.
//! A known device is also what lets a real user in while their account is
//! under attack (IAM-6: it is counted on its own key). Impossible travel
//! is not judged: there is no GeoIP data here.
//!
//! IAM-3's trusted devices live here too: a tenant may let a device that
//! passed a second factor skip it for `mfa_trust_days` (0, the default:
//! never). The user sees their devices and when each is trusted until
//! (`GET /api/v1/auth/devices`) and ends a device's trust
//! (`DELETE /api/v1/auth/devices/{id}/trust`); a password change or reset
//! ends every device's trust, and setting the tenant's days to 0 ends it
//! at the next login.

use super::post::Post;
use super::tokens::{OpaqueToken, TokenKind};
use super::{IdentityError, reset};
use crate::context::{Actor, Permit, RequestMeta, TenantScope};
use crate::mail::{self, Mail};
use crate::store::db;
use crate::store::{Change, JournalOp, Store, WriteTx};

/// The schema migration that brought devices (with the login counters).
pub const SCHEMA: i64 = super::lockout::SCHEMA;
/// The browser cookie that carries the device token.
pub const DEVICE_COOKIE: &str = "__Host-sr_device";
/// How long a device token is kept by a browser.
pub const DEVICE_COOKIE_DAYS: i64 = 400;
/// How long the "this wasn't me" link of a new device's mail works.
pub const NOT_ME_DAYS: i64 = 7;

/// A device of the user's that a login presented.
#[derive(Clone, Debug)]
pub struct KnownDevice {
    pub id: String,
    /// Until when it skips the second factor (IAM-3), if it was trusted.
    pub trusted_until: Option<String>,
}

/// The device `token` names, if it is one of this user's.
pub async fn recognise(
    store: &Store,
    scope: &TenantScope,
    user_id: &str,
    token: Option<&str>,
) -> Result<Option<KnownDevice>, IdentityError> {
    let Some(token) = token.and_then(|t| OpaqueToken::parse(TokenKind::Device, t)) else {
        return Ok(None);
    };
    if token.tenant() != scope.tenant_id() {
        return Ok(None);
    }
    let mut tx = store.read(scope).await?;
    let trust = if store.schema_has(super::mfa::passkeys::SCHEMA) {
        "mfa_trusted_until"
    } else {
        "NULL"
    };
    let row = db::query(format!(
        "SELECT id, {trust} FROM devices WHERE tenant_id = $1 AND user_id = $2 \
         AND token_hash = $3"
    ))
    .bind(scope.id_str())
    .bind(user_id)
    .bind(token.hash())
    .fetch_optional(tx.conn())
    .await?;
    row.map(|row| {
        Ok(KnownDevice {
            id: row.try_get(0)?,
            trusted_until: row.try_get(1)?,
        })
    })
    .transpose()
}

/// The address a device is shown with: the /24 of an IPv4 address, the
/// /48 of an IPv6 one.
fn prefix(ip: Option<&str>) -> Option<String> {
    match ip?.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Some(format!("{a}.{b}.{c}.0/24"))
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]))
        }
    }
}

/// Marks a known device seen now, in the login's own write: a statement
/// sent with its journal appends, no write of its own.
pub fn seen_in(tx: &mut WriteTx, device: &KnownDevice) {
    let (now, ip_prefix) = (crate::clock::now(), prefix(tx.meta().ip.as_deref()));
    let tenant = tx.scope().id_str().to_owned();
    // Journaled, so a restore (and a drill) has the device as it is.
    tx.record(Change {
        entity: "device",
        entity_id: device.id.clone(),
        op: JournalOp::Update,
        before: None,
        after: Some(serde_json::json!({"last_seen_at": now, "ip_prefix": ip_prefix})),
        sensitive: Vec::new(),
        diff_of: None,
    });
    let batch = tx.defer();
    let values = [
        batch.param(now),
        batch.param(ip_prefix),
        batch.param(tenant),
        batch.param(device.id.clone()),
    ];
    batch.push(format!(
        "UPDATE devices SET last_seen_at = {}, ip_prefix = {} WHERE tenant_id = {} AND id = {}",
        values[0], values[1], values[2], values[3]
    ));
}

/// The device a login came from with no token of the user's: made before
/// the login's write, registered in it ([`register_in`]).
pub struct NewDevice {
    id: String,
    token: OpaqueToken,
    not_me: OpaqueToken,
    /// Whether a mail could announce it.
    mail_on: bool,
}

impl NewDevice {
    pub fn new(store: &Store, post: &Post, scope: &TenantScope) -> NewDevice {
        NewDevice {
            id: uuid::Uuid::now_v7().to_string(),
            token: OpaqueToken::generate(TokenKind::Device, scope.tenant_id()),
            not_me: OpaqueToken::generate(TokenKind::NotMe, scope.tenant_id()),
            mail_on: post.mail_on(store),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The device token, to hand back once.
    pub fn reveal(&self) -> String {
        self.token.reveal()
    }
}

/// Registers a login's new device in the login's write: journaled, audited
/// as an event of its own (`auth.new_device`) in the same commit, and
/// mailed to the user with a "this wasn't me" link if they had another
/// device before.
pub async fn register_in(
    tx: &mut WriteTx,
    post: &Post,
    device: &NewDevice,
    user_id: &str,
    email: &str,
) -> Result<(), IdentityError> {
    let tenant = tx.scope().id_str().to_owned();
    let before: i64 =
        db::query_scalar("SELECT COUNT(*) FROM devices WHERE tenant_id = $1 AND user_id = $2")
            .bind(&tenant)
            .bind(user_id)
            .fetch_one(tx.conn())
            .await?;
    // The first device of a user is simply theirs; a later one is
    // announced, if a mail can say so.
    let announce = before > 0 && device.mail_on;
    let now = crate::clock::now();
    let user_agent = tx.meta().user_agent.clone();
    let ip_prefix = prefix(tx.meta().ip.as_deref());
    let not_me_expires = crate::clock::in_seconds(NOT_ME_DAYS * 86_400);
    let id = device.id.clone();
    db::query(
        "INSERT INTO devices (id, tenant_id, user_id, token_hash, user_agent, ip_prefix, \
         first_seen_at, last_seen_at, not_me_hash, not_me_expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)",
    )
    .bind(&id)
    .bind(&tenant)
    .bind(user_id)
    .bind(device.token.hash())
    .bind(user_agent.as_deref())
    .bind(ip_prefix.as_deref())
    .bind(&now)
    .bind(announce.then(|| device.not_me.hash()))
    .bind(announce.then_some(not_me_expires))
    .execute(tx.conn())
    .await?;
    tx.record(Change {
        entity: "device",
        entity_id: id.clone(),
        op: JournalOp::Insert,
        before: None,
        after: Some(serde_json::json!({
            "id": id, "user_id": user_id, "user_agent": user_agent,
            "ip_prefix": ip_prefix, "first_seen_at": now, "announced": announce,
        })),
        sensitive: vec![],
        diff_of: None,
    });
    if announce {
        let scope = tx.scope().clone();
        let letterhead = mail::letterhead_in(tx.conn(), &scope).await?;
        let link = post.mailer.link("/not-me", &device.not_me.reveal());
        mail::enqueue(
            tx,
            &post.vault.in_write(),
            &letterhead,
            Mail {
                to: email.to_owned(),
                template: "new_device",
                values: vec![
                    ("email", email.to_owned()),
                    ("when", now.clone()),
                    ("device", user_agent.unwrap_or_else(|| "unknown".into())),
                    ("address", ip_prefix.unwrap_or_else(|| "unknown".into())),
                    ("link", link),
                ],
            },
        )
        .await?;
    }
    tx.also_audit("auth.new_device", "device", id);
    Ok(())
}

/// How many days the tenant lets a device skip the second factor, if any.
pub async fn trust_days(store: &Store, scope: &TenantScope) -> Result<Option<i64>, IdentityError> {
    if !store.schema_has(super::mfa::passkeys::SCHEMA) {
        return Ok(None);
    }
    let mut tx = store.read(scope).await?;
    let days: Option<i64> =
        db::query_scalar("SELECT mfa_trust_days FROM tenant_settings WHERE tenant_id = $1")
            .bind(scope.id_str())
            .fetch_optional(tx.conn())
            .await?;
    Ok(days.filter(|d| *d > 0))
}

/// Whether `device` skips the second factor now: it is trusted until a
/// later time, and the tenant still allows trust (read only then: an
/// untrusted device costs no query).
pub async fn trusted(
    store: &Store,
    scope: &TenantScope,
    device: &KnownDevice,
) -> Result<bool, IdentityError> {
    let later = device
        .trusted_until
        .as_deref()
        .is_some_and(|until| until > crate::clock::now().as_str());
    Ok(later && trust_days(store, scope).await?.is_some())
}

/// Trusts a device of the user's for `days`, audited; until when.
pub async fn trust(
    store: &Store,
    scope: &TenantScope,
    user_id: &str,
    email: &str,
    device_id: &str,
    days: i64,
    meta: &RequestMeta,
) -> Result<String, IdentityError> {
    let until = crate::clock::in_seconds(days * 86_400);
    let permit = Permit::authentication(
        scope.clone(),
        Actor::user(user_id.to_owned(), email.to_owned()),
    );
    set_trust(
        store,
        &permit,
        meta,
        "auth.device_trusted",
        device_id,
        Some(until.clone()),
    )
    .await?;
    Ok(until)
}

/// Sets or ends (`None`) a device's trust, in a write of its own.
async fn set_trust(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    action: &'static str,
    device_id: &str,
    until: Option<String>,
) -> Result<(), IdentityError> {
    let (id, user_id) = (device_id.to_owned(), permit.actor().id.clone());
    store
        .write(permit, meta, action, move |tx| {
            Box::pin(async move {
                let done = db::query(
                    "UPDATE devices SET mfa_trusted_until = $1 WHERE tenant_id = $2 \
                     AND CAST(id AS TEXT) = $3 AND CAST(user_id AS TEXT) = $4",
                )
                .bind(until.as_deref())
                .bind(tx.scope().id_str().to_owned())
                .bind(&id)
                .bind(user_id.as_deref().unwrap_or(""))
                .execute(tx.conn())
                .await?;
                if done.rows_affected() != 1 {
                    return Err(IdentityError::SessionNotFound);
                }
                tx.record(Change {
                    entity: "device",
                    entity_id: id.clone(),
                    op: JournalOp::Update,
                    before: None,
                    after: Some(serde_json::json!({"mfa_trusted_until": until})),
                    sensitive: vec![],
                    diff_of: None,
                });
                tx.set_target("device", id);
                Ok(())
            })
        })
        .await
}

/// The caller ends one of their devices' trust.
pub async fn untrust(
    store: &Store,
    principal: &crate::access::Principal,
    device_id: &str,
    meta: &RequestMeta,
) -> Result<(), IdentityError> {
    if !store.schema_has(super::mfa::passkeys::SCHEMA) {
        return Err(IdentityError::SessionNotFound);
    }
    set_trust(
        store,
        &principal.own_permit(),
        meta,
        "auth.device_untrusted",
        device_id,
        None,
    )
    .await
}

/// One of a user's devices, as they see it.
#[derive(Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub id: String,
    pub user_agent: Option<String>,
    pub ip_prefix: Option<String>,
    pub first_seen_at: String,
    pub last_seen_at: String,
    /// Until when it skips the second factor (IAM-3), if trusted.
    pub trusted_until: Option<String>,
}

/// The caller's devices, most recently seen first.
pub async fn list(
    store: &Store,
    principal: &crate::access::Principal,
) -> Result<Vec<DeviceInfo>, IdentityError> {
    let trust = if store.schema_has(super::mfa::passkeys::SCHEMA) {
        "mfa_trusted_until"
    } else {
        "NULL"
    };
    let mut tx = store.read(principal.scope()).await?;
    let rows = db::query(format!(
        "SELECT id, user_agent, ip_prefix, first_seen_at, last_seen_at, {trust} FROM devices \
         WHERE tenant_id = $1 AND user_id = $2 ORDER BY last_seen_at DESC, id"
    ))
    .bind(principal.scope().id_str())
    .bind(&principal.user_id)
    .fetch_all(tx.conn())
    .await?;
    let now = crate::clock::now();
    rows.iter()
        .map(|row| {
            Ok(DeviceInfo {
                id: row.try_get(0)?,
                user_agent: row.try_get(1)?,
                ip_prefix: row.try_get(2)?,
                first_seen_at: row.try_get(3)?,
                last_seen_at: row.try_get(4)?,
                trusted_until: row
                    .try_get::<Option<String>, _>(5)?
                    .filter(|until| *until > now),
            })
        })
        .collect::<Result<_, db::Error>>()
        .map_err(IdentityError::from)
}

/// "This wasn't me": the user disowns a login announced by mail. Every
/// session ends, every device is forgotten, the password is removed and a
/// reset link is mailed.
pub async fn not_me(
    store: &Store,
    post: &Post,
    token: &str,
    meta: &RequestMeta,
) -> Result<(), IdentityError> {
    let token = OpaqueToken::parse(TokenKind::NotMe, token).ok_or(IdentityError::InvalidToken)?;
    let scope = TenantScope::trusted(token.tenant());
    let hash = token.hash();
    let found = {
        let mut tx = store.read(&scope).await?;
        db::query(
            "SELECT u.id, u.email, d.id FROM devices d JOIN users u ON u.id = d.user_id \
             WHERE d.tenant_id = $1 AND d.not_me_hash = $2 AND d.not_me_expires_at > $3 \
             AND u.status = 'active'",
        )
        .bind(scope.id_str())
        .bind(&hash)
        .bind(crate::clock::now())
        .fetch_optional(tx.conn())
        .await?
    };
    let row = found.ok_or(IdentityError::InvalidToken)?;
    let (user_id, email, device_id): (String, String, String) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let letterhead = post.letterhead(store, &scope).await?;
    let permit = Permit::authentication(scope.clone(), Actor::user(user_id.clone(), email.clone()));
    let link = reset::NewLink::generate(&scope, post);
    let post = post.clone();
    store
        .write(&permit, meta, "auth.not_me", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                // Once: the statement that removes the announced device
                // says whether this use won.
                let gone =
                    db::query("DELETE FROM devices WHERE tenant_id = $1 AND not_me_hash = $2")
                        .bind(&tenant)
                        .bind(&hash)
                        .execute(tx.conn())
                        .await?;
                if gone.rows_affected() != 1 {
                    return Err(IdentityError::InvalidToken);
                }
                let others: Vec<String> = db::query_scalar(
                    "SELECT id FROM devices WHERE tenant_id = $1 AND user_id = $2",
                )
                .bind(&tenant)
                .bind(&user_id)
                .fetch_all(tx.conn())
                .await?;
                db::query("DELETE FROM devices WHERE tenant_id = $1 AND user_id = $2")
                    .bind(&tenant)
                    .bind(&user_id)
                    .execute(tx.conn())
                    .await?;
                for id in others.into_iter().chain(std::iter::once(device_id.clone())) {
                    tx.record(Change {
                        entity: "device",
                        entity_id: id,
                        op: JournalOp::Delete,
                        before: None,
                        after: None,
                        sensitive: vec![],
                        diff_of: None,
                    });
                }
                let now = crate::clock::now();
                db::query(
                    "UPDATE users SET password_hash = NULL, password_change_required = 0, \
                     updated_at = $1 WHERE tenant_id = $2 AND id = $3",
                )
                .bind(&now)
                .bind(&tenant)
                .bind(&user_id)
                .execute(tx.conn())
                .await?;
                tx.record(Change {
                    entity: "user",
                    entity_id: user_id.clone(),
                    op: JournalOp::Update,
                    before: None,
                    after: Some(serde_json::json!({"password_hash": null, "updated_at": now})),
                    sensitive: vec!["password_hash".into()],
                    diff_of: None,
                });
                super::revoke::revoke_all_but(tx, &user_id, None, "not_me").await?;
                if let Some(letterhead) = &letterhead {
                    link.issue(tx, &post, letterhead, &user_id, &email).await?;
                }
                tx.set_target("user", user_id);
                Ok(())
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_shown_by_their_prefix() {
        assert_eq!(
            prefix(Some("203.0.113.77")).as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(
            prefix(Some("2001:db8:85a3::8a2e:370:7334")).as_deref(),
            Some("2001:db8:85a3::/48")
        );
        assert_eq!(prefix(Some("not an address")), None);
        assert_eq!(prefix(None), None);
    }
}
