//! Users of a tenant: invite, list, read, change role or status, delete.
//! Every function takes a [`Permit`] (the permission check already passed)
//! and every change goes through the write path.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::post::Post;
use super::{Email, IdentityError, NewInvitation};
use crate::access::roles;
use crate::access::{Abilities, held_roles};
use crate::context::Permit;
use crate::context::RequestMeta;
use crate::mail;
use crate::store::db;
use crate::store::{Change, JournalOp, ReadTx, Store, StoreError, WriteTx};

#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: String,
    pub email: String,
    /// The roles held, as `users.role` stores them (comma-separated); the
    /// API shows the first as `role` and all as `roles`.
    #[serde(serialize_with = "first_role")]
    pub role: String,
    #[serde(skip_deserializing)]
    pub roles: Vec<String>,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

fn first_role<S: serde::Serializer>(stored: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(stored.split(',').next().unwrap_or_default())
}

/// Whether a stored role list holds `admin`.
pub(crate) fn holds_admin(stored: &str) -> bool {
    held_roles(stored).iter().any(|r| r == "admin")
}

/// The role list a request names, as `role` (one) or `roles` (several);
/// `None` when it names none.
pub fn named_roles(
    role: Option<String>,
    roles: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, IdentityError> {
    match (role, roles) {
        (Some(_), Some(_)) => Err(IdentityError::UnknownRole(
            "name either role or roles, not both".into(),
        )),
        (Some(role), None) => Ok(Some(vec![role])),
        (None, Some(roles)) if roles.is_empty() => {
            Err(IdentityError::UnknownRole("roles is empty".into()))
        }
        (None, roles) => Ok(roles),
    }
}

impl User {
    fn from_row(row: &db::Row) -> Result<User, db::Error> {
        let role: String = row.try_get("role")?;
        Ok(User {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            roles: held_roles(&role),
            role,
            status: row.try_get("status")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// The journal's after-image; the hash is needed to restore the account
    /// and is redacted from the audit diff.
    fn image(&self, password_hash: Option<&str>) -> Value {
        json!({
            "id": self.id, "email": self.email, "role": self.role, "status": self.status,
            "password_hash": password_hash,
            "created_at": self.created_at, "updated_at": self.updated_at,
        })
    }
}

const USER_COLUMNS: &str = "id, email, role, status, created_at, updated_at";

/// Inserts an invited user (no password yet) and their invitation.
pub(crate) async fn invite_user(
    tx: &mut WriteTx,
    email: &Email,
    role: &str,
    invitation: &NewInvitation,
) -> Result<User, IdentityError> {
    let now = crate::clock::now();
    let tenant = tx.scope().id_str().to_owned();
    let user = User {
        id: uuid::Uuid::now_v7().to_string(),
        email: email.as_str().to_owned(),
        roles: held_roles(role),
        role: role.to_owned(),
        status: "invited".to_owned(),
        created_at: now.clone(),
        updated_at: now.clone(),
    };
    db::query(
        "INSERT INTO users (id, tenant_id, email, role, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&user.id)
    .bind(&tenant)
    .bind(&user.email)
    .bind(&user.role)
    .bind(&user.status)
    .bind(&now)
    .execute(tx.conn())
    .await
    .map_err(|e| match StoreError::from(e) {
        e if e.is_unique_violation_on("users") => IdentityError::EmailTaken,
        e => IdentityError::Store(e),
    })?;
    let invitation_id = uuid::Uuid::now_v7().to_string();
    db::query(
        "INSERT INTO invitations (id, tenant_id, user_id, token_hash, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&invitation_id)
    .bind(&tenant)
    .bind(&user.id)
    .bind(invitation.token.hash())
    .bind(&invitation.expires_at)
    .bind(&now)
    .execute(tx.conn())
    .await?;
    tx.record(Change {
        entity: "user",
        entity_id: user.id.clone(),
        op: JournalOp::Insert,
        before: None,
        after: Some(user.image(None)),
        sensitive: vec!["password_hash".into()],
        diff_of: None,
    });
    tx.record(Change {
        entity: "invitation",
        entity_id: invitation_id,
        op: JournalOp::Insert,
        before: None,
        after: Some(json!({
            "user_id": user.id, "token_hash": invitation.token.hash(),
            "expires_at": invitation.expires_at, "created_at": now,
        })),
        sensitive: vec!["token_hash".into()],
        diff_of: None,
    });
    tx.set_target("user", user.id.clone());
    Ok(user)
}

/// A created user, and the invitation token to hand to them when no mail
/// carries it.
#[derive(Debug, Serialize)]
pub struct InvitedUser {
    #[serde(flatten)]
    pub user: User,
    /// Only when mail is off: with a relay configured the token goes to the
    /// invitee alone, and the inviter never sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invitation_token: Option<String>,
    pub invitation_mailed: bool,
    pub invitation_expires_at: String,
}

/// Queues the invitation mail of `user` in `tx`.
pub(crate) async fn mail_invitation(
    tx: &mut WriteTx,
    post: &Post,
    letterhead: &mail::Letterhead,
    user: &User,
    invitation: &NewInvitation,
) -> Result<(), IdentityError> {
    let link = post.mailer.link("/invitation", &invitation.token_text());
    mail::enqueue(
        tx,
        &post.vault.in_write(),
        letterhead,
        mail::Mail {
            to: user.email.clone(),
            template: "invitation",
            values: vec![
                ("email", user.email.clone()),
                ("link", link),
                ("expires_at", invitation.expires_at.clone()),
            ],
        },
    )
    .await?;
    Ok(())
}

/// Invites a user holding `roles` (built-in or the tenant's own); the
/// inviter (`maker`) gives no role beyond what they may do themselves.
pub async fn create_user(
    store: &Store,
    post: &Post,
    (permit, maker): (&Permit, &Abilities),
    meta: &RequestMeta,
    email: &str,
    roles: &[String],
    invitation_ttl_hours: u32,
) -> Result<InvitedUser, IdentityError> {
    let email = Email::parse(email)?;
    let roles = roles.to_vec();
    let maker = maker.clone();
    let invitation = NewInvitation::generate(permit.scope().tenant_id(), invitation_ttl_hours);
    let letterhead = post.letterhead(store, permit.scope()).await?;
    let post = post.clone();
    store
        .write(permit, meta, "user.create", move |tx| {
            Box::pin(async move {
                let (role, _) = roles::assignable(tx, &roles, &maker).await?;
                let user = invite_user(tx, &email, &role, &invitation).await?;
                if let Some(letterhead) = &letterhead {
                    mail_invitation(tx, &post, letterhead, &user, &invitation).await?;
                }
                Ok(InvitedUser {
                    user,
                    invitation_token: letterhead.is_none().then(|| invitation.token_text()),
                    invitation_mailed: letterhead.is_some(),
                    invitation_expires_at: invitation.expires_at.clone(),
                })
            })
        })
        .await
}

pub async fn list_users(store: &Store, permit: &Permit) -> Result<Vec<User>, IdentityError> {
    let mut tx = store.read(permit.scope()).await?;
    let rows = db::query(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(permit.scope().id_str())
    .fetch_all(tx.conn())
    .await?;
    Ok(rows.iter().map(User::from_row).collect::<Result<_, _>>()?)
}

pub async fn get_user(store: &Store, permit: &Permit, id: &str) -> Result<User, IdentityError> {
    let mut tx = store.read(permit.scope()).await?;
    find_user(&mut tx, permit.scope().id_str(), id)
        .await?
        .ok_or(IdentityError::UserNotFound)
}

pub(super) async fn find_user(
    tx: &mut ReadTx,
    tenant_id: &str,
    id: &str,
) -> Result<Option<User>, db::Error> {
    let row = db::query(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(tx.conn())
    .await?;
    row.as_ref().map(User::from_row).transpose()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default, deserialize_with = "crate::json::present")]
    pub role: Option<String>,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub roles: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub status: Option<String>,
}

pub async fn update_user(
    store: &Store,
    (permit, maker): (&Permit, &Abilities),
    meta: &RequestMeta,
    id: &str,
    patch: UserPatch,
) -> Result<User, IdentityError> {
    let roles = named_roles(patch.role, patch.roles)?;
    let maker = maker.clone();
    let status = match patch.status.as_deref() {
        None => None,
        Some(s @ ("active" | "disabled")) => Some(s.to_owned()),
        Some(other) => return Err(IdentityError::UnknownStatus(other.to_owned())),
    };
    let id = id.to_owned();
    store
        .write(permit, meta, "user.update", move |tx| {
            Box::pin(async move {
                let (before, hash) = lock_user(tx, &id).await?;
                let mut after = before.clone();
                if let Some(roles) = &roles {
                    // Neither the roles given nor the ones taken away may
                    // reach beyond the maker's own (no demoting an admin
                    // from a role one could not grant).
                    let (stored, _) = roles::assignable(tx, roles, &maker).await?;
                    let tenant = tx.scope().id_str().to_owned();
                    let held = roles::resolve(tx.conn(), &tenant, &before.roles).await?;
                    if !maker.covers(&held) {
                        return Err(roles::RoleError::Escalation(before.role.clone()).into());
                    }
                    after.roles = held_roles(&stored);
                    after.role = stored;
                }
                if let Some(status) = status {
                    if before.status == "invited" && status == "active" {
                        // Only accepting the invitation activates an account.
                        return Err(IdentityError::NotYetAccepted);
                    }
                    after.status = status;
                }
                let stays_admin = holds_admin(&after.role) && after.status == "active";
                if holds_admin(&before.role) && before.status == "active" && !stays_admin {
                    ensure_another_admin(tx, &id).await?;
                }
                after.updated_at = crate::clock::now();
                db::query(
                    "UPDATE users SET role = $1, status = $2, updated_at = $3 \
                     WHERE tenant_id = $4 AND id = $5",
                )
                .bind(&after.role)
                .bind(&after.status)
                .bind(&after.updated_at)
                .bind(tx.scope().id_str().to_owned())
                .bind(&id)
                .execute(tx.conn())
                .await?;
                tx.record(Change {
                    entity: "user",
                    entity_id: id.clone(),
                    op: JournalOp::Update,
                    before: Some(before.image(hash.as_deref())),
                    after: Some(after.image(hash.as_deref())),
                    sensitive: vec!["password_hash".into()],
                    diff_of: None,
                });
                if after.status == "disabled" && before.status != "disabled" {
                    super::revoke::revoke_all(tx, &id, "user_disabled").await?;
                } else if after.role != before.role {
                    // A change of privilege is a new session (IAM-5): the
                    // user logs in again, under the new role, with new ids.
                    super::revoke::revoke_all(tx, &id, "role_changed").await?;
                }
                tx.set_target("user", id.clone());
                Ok(after)
            })
        })
        .await
}

pub async fn delete_user(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    id: &str,
) -> Result<(), IdentityError> {
    let id = id.to_owned();
    store
        .write(permit, meta, "user.delete", move |tx| {
            Box::pin(async move {
                let (before, hash) = lock_user(tx, &id).await?;
                if holds_admin(&before.role) && before.status == "active" {
                    ensure_another_admin(tx, &id).await?;
                }
                // Sessions, refresh tokens and invitations go with the user (FK cascade).
                db::query("DELETE FROM users WHERE tenant_id = $1 AND id = $2")
                    .bind(tx.scope().id_str().to_owned())
                    .bind(&id)
                    .execute(tx.conn())
                    .await?;
                tx.record(Change {
                    entity: "user",
                    entity_id: id.clone(),
                    op: JournalOp::Delete,
                    before: Some(before.image(hash.as_deref())),
                    after: None,
                    sensitive: vec!["password_hash".into()],
                    diff_of: None,
                });
                Ok(())
            })
        })
        .await
}

async fn lock_user(tx: &mut WriteTx, id: &str) -> Result<(User, Option<String>), IdentityError> {
    let tenant = tx.scope().id_str().to_owned();
    let row = db::query(format!(
        "SELECT {USER_COLUMNS}, password_hash FROM users WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(&tenant)
    .bind(id)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(IdentityError::UserNotFound)?;
    Ok((User::from_row(&row)?, row.try_get("password_hash")?))
}

async fn ensure_another_admin(tx: &mut WriteTx, except: &str) -> Result<(), IdentityError> {
    let others: i64 = db::query_scalar(
        "SELECT COUNT(*) FROM users WHERE tenant_id = $1 \
         AND (',' || role || ',') LIKE '%,admin,%' AND status = 'active' AND id <> $2",
    )
    .bind(tx.scope().id_str().to_owned())
    .bind(except)
    .fetch_one(tx.conn())
    .await?;
    if others == 0 {
        Err(IdentityError::LastAdmin)
    } else {
        Ok(())
    }
}

/// Whether `user_id` (a user's or an API key's id) may still read the
/// records of `collection` now: the user exists and is active (the key is
/// neither revoked nor expired), holds a role that reads them, and the
/// tenant is active. A signed link is only as good as its issuer is
/// (FIL-2): disabling, deleting or demoting a user, or revoking a key,
/// ends the links they issued.
pub async fn may_still_read(
    store: &Store,
    scope: &crate::context::TenantScope,
    user_id: &str,
    collection: &str,
) -> Result<bool, IdentityError> {
    let mut tx = store.read(scope).await?;
    let role: Option<String> = db::query_scalar(
        "SELECT u.role FROM users u JOIN tenants t ON t.id = u.tenant_id \
         WHERE u.tenant_id = $1 AND u.id = $2 AND u.status = 'active' AND t.status = 'active'",
    )
    .bind(scope.id_str())
    .bind(user_id)
    .fetch_optional(tx.conn())
    .await?;
    let role = match role {
        Some(role) => Some(role),
        None if store.schema_has(roles::SCHEMA) => {
            db::query_scalar(
                "SELECT k.roles FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
                 WHERE k.tenant_id = $1 AND k.id = $2 AND k.revoked_at IS NULL \
                 AND (k.expires_at IS NULL OR k.expires_at > $3) AND t.status = 'active'",
            )
            .bind(scope.id_str())
            .bind(user_id)
            .bind(crate::clock::now())
            .fetch_optional(tx.conn())
            .await?
        }
        None => None,
    };
    let Some(role) = role else {
        return Ok(false);
    };
    let abilities = roles::resolve(tx.conn(), scope.id_str(), &held_roles(&role)).await?;
    Ok(abilities.allows_on(crate::access::Permission::RecordsRead, collection))
}
