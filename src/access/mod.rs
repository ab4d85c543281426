//! Authorization (ACC-1, first cut): built-in roles, each a set of named
//! permissions, checked on every operation.
//!
//! The check is a type: the only way to obtain a [`Permit`] — which the read
//! and write paths demand — is [`authorize`], which consults the principal's
//! role, or one of the crate-internal constructors for the CLI operator and
//! for credential-checked authentication steps. A denied operation is a
//! `403` and an audit event with outcome `denied`.

use serde::Serialize;

pub use crate::context::Permit;
use crate::context::TenantScope;
use crate::context::{Actor, Outcome, RequestMeta};
use crate::store::{Store, StoreError};

/// A named permission; every API operation names the one it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Permission {
    #[serde(rename = "users.read")]
    UsersRead,
    #[serde(rename = "users.manage")]
    UsersManage,
    #[serde(rename = "collections.read")]
    CollectionsRead,
    #[serde(rename = "collections.manage")]
    CollectionsManage,
    #[serde(rename = "records.read")]
    RecordsRead,
    #[serde(rename = "records.write")]
    RecordsWrite,
    #[serde(rename = "audit.read")]
    AuditRead,
    #[serde(rename = "settings.manage")]
    SettingsManage,
    /// Data keys: rotation, BYOK, their status (ENC-3).
    #[serde(rename = "keys.manage")]
    KeysManage,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::UsersRead,
        Permission::UsersManage,
        Permission::CollectionsRead,
        Permission::CollectionsManage,
        Permission::RecordsRead,
        Permission::RecordsWrite,
        Permission::AuditRead,
        Permission::SettingsManage,
        Permission::KeysManage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::UsersRead => "users.read",
            Permission::UsersManage => "users.manage",
            Permission::CollectionsRead => "collections.read",
            Permission::CollectionsManage => "collections.manage",
            Permission::RecordsRead => "records.read",
            Permission::RecordsWrite => "records.write",
            Permission::AuditRead => "audit.read",
            Permission::SettingsManage => "settings.manage",
            Permission::KeysManage => "keys.manage",
        }
    }
}

/// Built-in roles. Custom roles per tenant come with a later issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything inside the tenant.
    Admin,
    /// Reads collections, reads and writes records.
    Member,
    /// Reads collections and records.
    Viewer,
    /// Reads the audit trail and the access log, nothing else: what a
    /// forensic analyst or an external auditor gets.
    Auditor,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Admin => &Permission::ALL,
            Role::Member => &[CollectionsRead, RecordsRead, RecordsWrite],
            Role::Viewer => &[CollectionsRead, RecordsRead],
            Role::Auditor => &[AuditRead],
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

/// An authenticated user acting inside their tenant.
#[derive(Clone, Debug)]
pub struct Principal {
    pub(crate) scope: TenantScope,
    pub user_id: String,
    pub email: String,
    pub role: Role,
    pub session_id: String,
    /// The user holds a temporary password from an admin's reset: only the
    /// password change (and logout, and `/me`) is allowed (IAM-2).
    pub must_change_password: bool,
    /// The user has a confirmed second factor (IAM-3).
    pub mfa_enrolled: bool,
    /// When this session last passed a second factor (step-up).
    pub mfa_at: Option<String>,
    /// The tenant's policy requires a factor the user does not have yet:
    /// only enrolment is allowed.
    pub must_enrol_mfa: bool,
}

impl Principal {
    pub fn scope(&self) -> &TenantScope {
        &self.scope
    }

    pub fn actor(&self) -> Actor {
        Actor::user(self.user_id.clone(), self.email.clone())
    }

    /// The permit to act on the principal's own account (their sessions,
    /// password, factors): no permission is needed for that.
    pub(crate) fn own_permit(&self) -> crate::context::Permit {
        crate::context::Permit::user(self.scope.clone(), self.actor())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("this operation needs the permission {}", .0.name())]
    Denied(Permission),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `permission` for `principal`; a denial is recorded as an audit
/// event of `action` with outcome `denied` before it is returned.
pub async fn authorize(
    store: &Store,
    principal: &Principal,
    permission: Permission,
    action: &'static str,
    meta: &RequestMeta,
) -> Result<Permit, AccessError> {
    if principal.role.allows(permission) {
        return Ok(Permit::user(principal.scope.clone(), principal.actor()));
    }
    let witness = Permit::user(principal.scope.clone(), principal.actor());
    let needed = permission.name();
    store
        .write(&witness, meta, action, move |tx| {
            Box::pin(async move {
                tx.set_outcome(Outcome::Denied);
                tx.set_target("permission", needed);
                Ok::<_, StoreError>(())
            })
        })
        .await?;
    tracing::info!(action, permission = needed, "operation denied");
    Err(AccessError::Denied(permission))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_read_members_write_admins_manage() {
        assert!(Role::Viewer.allows(Permission::RecordsRead));
        assert!(!Role::Viewer.allows(Permission::RecordsWrite));
        assert!(Role::Member.allows(Permission::RecordsWrite));
        assert!(!Role::Member.allows(Permission::CollectionsManage));
        assert!(!Role::Member.allows(Permission::AuditRead));
        assert!(Role::Auditor.allows(Permission::AuditRead));
        assert!(!Role::Auditor.allows(Permission::RecordsRead));
        for p in Permission::ALL {
            assert!(Role::Admin.allows(p));
        }
    }
}
