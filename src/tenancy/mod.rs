//! Tenancy: every customer datum belongs to one tenant ("company") through a
//! foreign key, and tenant data is reachable only through a [`TenantScope`]
//! (TEN-1). A scope cannot be built from a bare id outside this crate: it
//! comes from an authenticated principal (a verified token), from a
//! credential that names its tenant (invitation and refresh tokens), or from
//! the operator's CLI. On PostgreSQL the store turns the scope into the
//! `app.tenant_id` setting that row-level security checks (TEN-2).

pub mod allowlist;
pub mod holds;
mod settings;

use serde::Serialize;

use crate::access::Role;
use crate::identity::{self, Email, NewInvitation};
use crate::store::db;
use crate::store::{Change, JournalOp, Store, StoreError};

use crate::context::{Actor, Permit, RequestMeta};
pub use crate::context::{TenantId, TenantScope};
pub use allowlist::{AllowListError, AllowLists};
pub use settings::{
    MIN_AUDIT_RETENTION_DAYS, SESSION_SETTINGS_SCHEMA, SettingsPatch, TenantSettings, get_settings,
    router, update_settings,
};

/// A tenant's public handle, used at login: 2–63 of `a-z 0-9 -`, starting
/// with a letter, not ending with `-`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Slug(String);

impl Slug {
    pub fn parse(text: &str) -> Result<Slug, TenancyError> {
        let ok = (2..=63).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && !text.ends_with('-')
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Slug(text.to_owned()))
        } else {
            Err(TenancyError::InvalidSlug)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    #[error(
        "slug must be 2-63 characters of a-z, 0-9 and '-', start with a letter and not end with '-'"
    )]
    InvalidSlug,
    #[error("name must be 1-200 characters")]
    InvalidName,
    #[error("a tenant with this slug already exists")]
    SlugTaken,
    #[error("{0}")]
    InvalidSetting(String),
    #[error("ip_allowlist: {0}")]
    InvalidAllowList(String),
    #[error(
        "this list leaves out your own address {0}: you would lock yourself out; \
         send confirm_lockout: true to save it anyway"
    )]
    WouldLockOut(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<db::Error> for TenancyError {
    fn from(e: db::Error) -> Self {
        TenancyError::Store(e.into())
    }
}

#[derive(Debug, Serialize)]
pub struct Tenant {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub status: String,
    pub created_at: String,
}

/// What creating a tenant hands back: the first admin's invitation.
#[derive(Debug, Serialize)]
pub struct CreatedTenant {
    pub tenant_id: String,
    pub slug: String,
    pub admin_user_id: String,
    pub admin_email: String,
    /// Only when mail is off; otherwise the admin alone receives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invitation_token: Option<String>,
    pub invitation_mailed: bool,
    pub invitation_expires_at: String,
}

/// Creates a tenant and invites its first admin, through the write path,
/// with the CLI operator as the actor.
pub async fn create(
    store: &Store,
    post: &identity::Post,
    slug: &str,
    name: &str,
    admin_email: &str,
    invitation_ttl_hours: u32,
) -> Result<CreatedTenant, TenantCreateError> {
    let slug = Slug::parse(slug)?;
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(TenancyError::InvalidName.into());
    }
    let admin_email = Email::parse(admin_email)?;
    let id = TenantId::generate();
    let scope = TenantScope::trusted(id);
    let permit = Permit::operator(scope, Actor::operator());
    let invitation = NewInvitation::generate(id, invitation_ttl_hours);
    let letterhead =
        (post.mailer.is_configured() && store.schema_has(crate::mail::SCHEMA)).then(|| {
            crate::mail::Letterhead {
                tenant_name: name.clone(),
                language: crate::mail::templates::DEFAULT_LANGUAGE.to_owned(),
            }
        });
    let post = post.clone();
    let created = store
        .write(&permit, &RequestMeta::cli(), "tenant.create", move |tx| {
            Box::pin(async move {
                let now = crate::clock::now();
                let tenant_id = tx.scope().id_str().to_owned();
                db::query(
                    "INSERT INTO tenants (id, slug, name, status, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'active', $4, $4)",
                )
                .bind(&tenant_id)
                .bind(slug.as_str())
                .bind(&name)
                .bind(&now)
                .execute(tx.conn())
                .await
                .map_err(|e| on_constraint(e.into()))?;
                db::query("INSERT INTO tenant_sequences (tenant_id) VALUES ($1)")
                    .bind(&tenant_id)
                    .execute(tx.conn())
                    .await?;
                db::query("INSERT INTO tenant_settings (tenant_id, updated_at) VALUES ($1, $2)")
                    .bind(&tenant_id)
                    .bind(&now)
                    .execute(tx.conn())
                    .await?;
                tx.record(Change {
                    entity: "tenant",
                    entity_id: tenant_id.clone(),
                    op: JournalOp::Insert,
                    before: None,
                    after: Some(serde_json::json!({
                        "id": tenant_id, "slug": slug.as_str(), "name": name,
                        "status": "active", "created_at": now,
                    })),
                    sensitive: vec![],
                    diff_of: None,
                });
                let user =
                    identity::invite_user(tx, &admin_email, Role::Admin.as_str(), &invitation)
                        .await
                        .map_err(TenantCreateError::Identity)?;
                if let Some(letterhead) = &letterhead {
                    identity::mail_invitation(tx, &post, letterhead, &user, &invitation).await?;
                }
                tx.set_target("tenant", tenant_id.clone());
                Ok::<_, TenantCreateError>(CreatedTenant {
                    tenant_id,
                    slug: slug.as_str().to_owned(),
                    admin_user_id: user.id,
                    admin_email: admin_email.as_str().to_owned(),
                    invitation_token: letterhead.is_none().then(|| invitation.token_text()),
                    invitation_mailed: letterhead.is_some(),
                    invitation_expires_at: invitation.expires_at.clone(),
                })
            })
        })
        .await?;
    Ok(created)
}

fn on_constraint(e: StoreError) -> TenancyError {
    if e.is_unique_violation_on("tenants") {
        TenancyError::SlugTaken
    } else {
        TenancyError::Store(e)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TenantCreateError {
    #[error(transparent)]
    Tenancy(#[from] TenancyError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
}

impl From<StoreError> for TenantCreateError {
    fn from(e: StoreError) -> Self {
        TenantCreateError::Tenancy(TenancyError::Store(e))
    }
}

impl From<db::Error> for TenantCreateError {
    fn from(e: db::Error) -> Self {
        TenantCreateError::Tenancy(e.into())
    }
}

/// The tenant directory (operator view).
pub async fn list(store: &Store) -> Result<Vec<Tenant>, StoreError> {
    let mut tx = store.read_unscoped().await?;
    let rows =
        db::query("SELECT id, slug, name, status, created_at FROM tenants ORDER BY created_at, id")
            .fetch_all(tx.conn())
            .await?;
    rows.iter().map(tenant_from_row).collect()
}

/// Every tenant's scope, for the system's own scheduled jobs.
pub(crate) async fn all_scopes(store: &Store) -> Result<Vec<TenantScope>, StoreError> {
    store.tenant_scopes().await
}

/// Looks a tenant up by slug, for login. Suspended tenants are not found.
pub(crate) async fn find_active_by_slug(
    store: &Store,
    slug: &str,
) -> Result<Option<TenantScope>, StoreError> {
    let Ok(slug) = Slug::parse(slug) else {
        return Ok(None);
    };
    let mut tx = store.read_unscoped().await?;
    let id: Option<String> =
        db::query_scalar("SELECT id FROM tenants WHERE slug = $1 AND status = 'active'")
            .bind(slug.as_str())
            .fetch_optional(tx.conn())
            .await?;
    Ok(id
        .as_deref()
        .and_then(TenantId::parse)
        .map(TenantScope::trusted))
}

fn tenant_from_row(row: &db::Row) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: row.try_get("id")?,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_handles() {
        assert!(Slug::parse("acme").is_ok());
        assert!(Slug::parse("acme-2").is_ok());
        for bad in ["", "a", "Acme", "-acme", "acme-", "ac me", "2acme", "acmé"] {
            assert!(Slug::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
