//! Authorization (ACC-1): roles, each a set of named permissions, checked
//! on every operation.
//!
//! A permission is general (`records.read`: every collection) or names a
//! collection (`records.read:work_orders`); `records.read_personal` shows
//! personal and sensitive values, which others see as `"[redacted]"`. A
//! principal holds one or more roles — built-in ([`Role`]) or the tenant's
//! own ([`roles`]) — and may do what any of them allows ([`Abilities`]).
//!
//! The check is a type: the only way to obtain a [`Permit`] — which the read
//! and write paths demand — is [`authorize`], which the HTTP router runs for
//! the permission each route declares (the route registry), or one of the
//! crate-internal constructors for the CLI operator and for
//! credential-checked authentication steps. A denied operation is a `403`
//! and an audit event with outcome `denied`.

pub mod http;
pub mod roles;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

pub use crate::context::Permit;
use crate::context::{Actor, Outcome, Reach, RequestMeta, TenantScope};
use crate::store::{Store, StoreError};

/// A named permission; every API operation names the one it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Permission {
    #[serde(rename = "users.read")]
    UsersRead,
    #[serde(rename = "users.manage")]
    UsersManage,
    #[serde(rename = "collections.read")]
    CollectionsRead,
    #[serde(rename = "collections.manage")]
    CollectionsManage,
    /// Records of every collection; `records.read:<collection>` for one.
    #[serde(rename = "records.read")]
    RecordsRead,
    /// Writes (and so reads) records of every collection;
    /// `records.write:<collection>` for one.
    #[serde(rename = "records.write")]
    RecordsWrite,
    /// Personal and sensitive values in the clear; without it they read
    /// `"[redacted]"` (data minimisation by role).
    #[serde(rename = "records.read_personal")]
    RecordsReadPersonal,
    #[serde(rename = "audit.read")]
    AuditRead,
    #[serde(rename = "settings.manage")]
    SettingsManage,
    /// Data keys: rotation, BYOK, their status (ENC-3).
    #[serde(rename = "keys.manage")]
    KeysManage,
    /// The tenant's own roles.
    #[serde(rename = "roles.manage")]
    RolesManage,
    /// The tenant's API keys.
    #[serde(rename = "api_keys.manage")]
    ApiKeysManage,
    /// Support access: approve or deny requests, revoke grants, see every
    /// grant and what was accessed under it (ACC-2).
    #[serde(rename = "support.manage")]
    SupportManage,
}

impl Permission {
    pub const ALL: [Permission; 13] = [
        Permission::UsersRead,
        Permission::UsersManage,
        Permission::CollectionsRead,
        Permission::CollectionsManage,
        Permission::RecordsRead,
        Permission::RecordsWrite,
        Permission::RecordsReadPersonal,
        Permission::AuditRead,
        Permission::SettingsManage,
        Permission::KeysManage,
        Permission::RolesManage,
        Permission::ApiKeysManage,
        Permission::SupportManage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::UsersRead => "users.read",
            Permission::UsersManage => "users.manage",
            Permission::CollectionsRead => "collections.read",
            Permission::CollectionsManage => "collections.manage",
            Permission::RecordsRead => "records.read",
            Permission::RecordsWrite => "records.write",
            Permission::RecordsReadPersonal => "records.read_personal",
            Permission::AuditRead => "audit.read",
            Permission::SettingsManage => "settings.manage",
            Permission::KeysManage => "keys.manage",
            Permission::RolesManage => "roles.manage",
            Permission::ApiKeysManage => "api_keys.manage",
            Permission::SupportManage => "support.manage",
        }
    }

    pub fn parse(text: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == text)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// One entry of a role's permission list: a general permission, or
/// reading or writing the records of one collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    General(Permission),
    Read(String),
    Write(String),
}

impl Grant {
    /// `records.read`, `records.read:work_orders`, `users.manage`, …
    pub fn parse(text: &str) -> Result<Grant, String> {
        if let Some((kind, collection)) = text.split_once(':') {
            if !is_name(collection) {
                return Err(format!(
                    "{text:?}: {collection:?} is not a collection name (lowercase letters, digits, _)"
                ));
            }
            return match kind {
                "records.read" => Ok(Grant::Read(collection.to_owned())),
                "records.write" => Ok(Grant::Write(collection.to_owned())),
                _ => Err(format!(
                    "{text:?}: only records.read and records.write name a collection"
                )),
            };
        }
        Permission::parse(text).map(Grant::General).ok_or_else(|| {
            let known: Vec<&str> = Permission::ALL.iter().map(|p| p.name()).collect();
            format!(
                "unknown permission {text:?}: use {}, or records.read:<collection> / \
                 records.write:<collection>",
                known.join(", ")
            )
        })
    }

    pub fn name(&self) -> String {
        match self {
            Grant::General(p) => p.name().to_owned(),
            Grant::Read(c) => format!("records.read:{c}"),
            Grant::Write(c) => format!("records.write:{c}"),
        }
    }
}

/// A collection's (or a role's) name: `[a-z][a-z0-9_]{0,62}`, as the
/// records domain requires of collections.
pub fn is_name(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What a principal may do: the union of its roles' permissions. Built
/// once per session check (cached with it), so a request's check is a few
/// bit and set lookups in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Abilities {
    general: u32,
    reads: BTreeSet<String>,
    writes: BTreeSet<String>,
}

impl Abilities {
    pub fn grant(&mut self, grant: &Grant) {
        match grant {
            Grant::General(p) => self.general |= p.bit(),
            Grant::Read(c) => {
                self.reads.insert(c.clone());
            }
            Grant::Write(c) => {
                self.writes.insert(c.clone());
            }
        }
    }

    pub fn of_role(role: Role) -> Abilities {
        let mut abilities = Abilities::default();
        for p in role.permissions() {
            abilities.grant(&Grant::General(*p));
        }
        abilities
    }

    pub fn add(&mut self, other: &Abilities) {
        self.general |= other.general;
        self.reads.extend(other.reads.iter().cloned());
        self.writes.extend(other.writes.iter().cloned());
    }

    /// A general permission (every collection, for records).
    pub fn allows(&self, permission: Permission) -> bool {
        let implied = match permission {
            Permission::RecordsRead => Permission::RecordsWrite.bit(),
            _ => 0,
        };
        self.general & (permission.bit() | implied) != 0
    }

    /// `permission` for the records of `collection` (or general).
    pub fn allows_on(&self, permission: Permission, collection: &str) -> bool {
        if self.allows(permission) {
            return true;
        }
        match permission {
            Permission::RecordsRead => {
                self.reads.contains(collection) || self.writes.contains(collection)
            }
            Permission::RecordsWrite => self.writes.contains(collection),
            _ => false,
        }
    }

    /// What the permit of these abilities shows.
    pub fn reach(&self) -> Reach {
        let records = (!self.allows(Permission::RecordsRead))
            .then(|| Arc::new(self.reads.union(&self.writes).cloned().collect()));
        Reach::new(records, self.allows(Permission::RecordsReadPersonal))
    }

    /// Whether these abilities include everything `other` allows: an API
    /// key or a role assignment never gives more than its maker has.
    pub fn covers(&self, other: &Abilities) -> bool {
        other.general & !self.general == 0
            && other
                .reads
                .iter()
                .all(|c| self.allows_on(Permission::RecordsRead, c))
            && other
                .writes
                .iter()
                .all(|c| self.allows_on(Permission::RecordsWrite, c))
    }

    /// The permission names, general ones first.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Permission::ALL
            .iter()
            .filter(|p| self.general & p.bit() != 0)
            .map(|p| p.name().to_owned())
            .collect();
        names.extend(self.reads.iter().map(|c| format!("records.read:{c}")));
        names.extend(self.writes.iter().map(|c| format!("records.write:{c}")));
        names
    }
}

/// Built-in roles: every tenant has them, and they cannot be edited.
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
    /// forensic analyst or an external auditor gets. Audit diffs of records
    /// show which fields changed, not their values.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Member, Role::Viewer, Role::Auditor];

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Role::Admin => "everything inside the tenant",
            Role::Member => "reads collections, reads and writes records",
            Role::Viewer => "reads collections and records",
            Role::Auditor => "reads the audit trail and the access log, nothing else",
        }
    }

    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Admin => &Permission::ALL,
            Role::Member => &[
                CollectionsRead,
                RecordsRead,
                RecordsWrite,
                RecordsReadPersonal,
            ],
            Role::Viewer => &[CollectionsRead, RecordsRead, RecordsReadPersonal],
            Role::Auditor => &[AuditRead],
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

/// The roles a user holds, as `users.role` stores them: names joined by
/// commas, each built-in or one of the tenant's own.
pub fn held_roles(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Who a principal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A user, by a session (token or cookie).
    User,
    /// An API key: it has no account of its own (no `/me`, no sessions, no
    /// factors) and acts only on routes that declare a permission.
    ApiKey,
    /// A support operator acting under a support grant the tenant approved
    /// (or a legal order), with exactly its scope (ACC-2).
    Support,
}

/// The support grant a [`PrincipalKind::Support`] principal acts under.
#[derive(Clone, Debug)]
pub struct SupportGrant {
    pub id: String,
    pub reason: String,
    /// Whether the grant reaches the records' files.
    pub files: bool,
    pub expires_at: String,
}

/// An authenticated user (or API key) acting inside their tenant.
#[derive(Clone, Debug)]
pub struct Principal {
    pub(crate) scope: TenantScope,
    pub kind: PrincipalKind,
    /// The user's id (the key's id for an API key).
    pub user_id: String,
    /// The user's e-mail address (the key's name for an API key).
    pub email: String,
    /// The roles held, by name.
    pub roles: Arc<[String]>,
    /// What they allow together.
    pub abilities: Arc<Abilities>,
    /// Empty for an API key or a support grant.
    pub session_id: String,
    /// The grant a support operator acts under.
    pub support: Option<Arc<SupportGrant>>,
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
        match self.kind {
            PrincipalKind::User => Actor::user(self.user_id.clone(), self.email.clone()),
            PrincipalKind::ApiKey => Actor::api_key(self.user_id.clone(), self.email.clone()),
            PrincipalKind::Support => Actor {
                kind: crate::context::ActorKind::Operator,
                id: Some(format!("operator:{}", self.user_id)),
                email: Some(self.email.clone()),
            },
        }
    }

    /// The permit to act on the principal's own account (their sessions,
    /// password, factors): no permission is needed for that.
    pub(crate) fn own_permit(&self) -> crate::context::Permit {
        crate::context::Permit::user(self.scope.clone(), self.actor())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("this operation needs the permission {0}")]
    Denied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `permission` for `principal` — on the records of `collection`
/// when the operation names one; a denial is recorded as an audit event of
/// `action` with outcome `denied` before it is returned. The router calls
/// this for the permission each route declares; handlers never do.
pub async fn authorize(
    store: &Store,
    principal: &Principal,
    permission: Permission,
    collection: Option<&str>,
    action: &'static str,
    meta: &RequestMeta,
) -> Result<Permit, AccessError> {
    let allowed = match collection {
        Some(collection) => principal.abilities.allows_on(permission, collection),
        None => principal.abilities.allows(permission),
    };
    if allowed {
        return Ok(Permit::with_reach(
            principal.scope.clone(),
            principal.actor(),
            principal.abilities.reach(),
        ));
    }
    let witness = Permit::user(principal.scope.clone(), principal.actor());
    let needed = match collection {
        Some(c) => format!("{}:{c}", permission.name()),
        None => permission.name().to_owned(),
    };
    let logged = needed.clone();
    // Under a support grant the denial concerns the grant: it shows (or,
    // for a sealed legal order, stays hidden) with the grant's other events.
    let grant = principal.support.as_ref().map(|g| g.id.clone());
    store
        .write(&witness, meta, action, move |tx| {
            Box::pin(async move {
                tx.set_outcome(Outcome::Denied);
                match grant {
                    Some(grant) => {
                        tx.set_target("support_grant", grant.clone());
                        tx.set_details(serde_json::json!({"grant": grant, "permission": logged}));
                    }
                    None => tx.set_target("permission", logged),
                }
                Ok::<_, StoreError>(())
            })
        })
        .await?;
    tracing::info!(action, permission = %needed, "operation denied");
    Err(AccessError::Denied(needed))
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

    #[test]
    fn a_collection_permission_reaches_that_collection_only() {
        let mut a = Abilities::default();
        a.grant(&Grant::parse("records.read:work_orders").unwrap());
        assert!(a.allows_on(Permission::RecordsRead, "work_orders"));
        assert!(!a.allows_on(Permission::RecordsRead, "invoices"));
        assert!(!a.allows_on(Permission::RecordsWrite, "work_orders"));
        assert!(!a.allows(Permission::RecordsRead));
        let reach = a.reach();
        assert!(reach.reads("work_orders") && !reach.reads("invoices"));
        assert!(!reach.personal());
        a.grant(&Grant::parse("records.write:invoices").unwrap());
        assert!(
            a.allows_on(Permission::RecordsRead, "invoices"),
            "writing implies reading"
        );
    }

    #[test]
    fn covers_refuses_what_the_maker_lacks() {
        let member = Abilities::of_role(Role::Member);
        let admin = Abilities::of_role(Role::Admin);
        let mut narrow = Abilities::default();
        narrow.grant(&Grant::Read("work_orders".into()));
        assert!(member.covers(&narrow));
        assert!(admin.covers(&member));
        assert!(!member.covers(&admin));
        assert!(!narrow.covers(&member));
    }

    #[test]
    fn grants_parse_and_refuse_clearly() {
        assert_eq!(
            Grant::parse("users.manage"),
            Ok(Grant::General(Permission::UsersManage))
        );
        assert!(Grant::parse("users.manage:x").is_err());
        assert!(Grant::parse("records.read:Bad Name").is_err());
        assert!(
            Grant::parse("root")
                .unwrap_err()
                .contains("unknown permission")
        );
        assert_eq!(
            held_roles("member, wo_reader,"),
            vec!["member".to_owned(), "wo_reader".to_owned()]
        );
    }
}
