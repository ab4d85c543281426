//! ACC-2, AUD-5: staff reach a tenant's data only with its consent or a
//! legal order, in a scope, for a time, and the tenant sees every access.
//!
//! * A `support` operator asks (`POST /api/v1/ops/support-access/requests`:
//!   tenant, scope — collections, read only or read-write, files — reason,
//!   at most 72 hours). The tenant's admins are mailed and approve or deny
//!   it; they may revoke an active grant at any moment.
//! * A `security_officer` may instead record a legal order (reference,
//!   authority, scope, the support operator it is for, and whether the
//!   tenant may be told); it grants access at once. The tenant is mailed
//!   unless the order forbids it; such a grant, and every event about it,
//!   is hidden from the tenant's trail until the officer releases it.
//! * Under an active grant the operator sends `X-Support-Grant: <handle>`
//!   with their operator token and acts with exactly the grant's scope;
//!   every request is an audit event (`support.access`) in the tenant's
//!   trail naming the grant, its reason and the operation, and an access
//!   log row with actor type `support`. Expiry ends a grant by itself.
//!
//! Grants are the tenant's rows, written through its write path and
//! journaled, so its backups carry them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{OperatorError, OperatorPrincipal, OperatorRole};
use crate::access::{Abilities, Grant, SupportGrant};
use crate::context::{Actor, ActorKind, Permit, RequestMeta, TenantId, TenantScope};
use crate::mail;
use crate::store::db;
use crate::store::{Change, JournalOp, Store, StoreError, WriteTx};

/// The schema version that has `support_grants`.
pub const SCHEMA: i64 = 18;

/// The longest grant.
pub const MAX_HOURS: i64 = 72;

#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("no active tenant with slug {0:?}")]
    NoTenant(String),
    #[error("no such support grant")]
    NotFound,
    #[error("the grant is {0}, not {1}")]
    WrongState(String, &'static str),
    #[error("{0:?} is no active support operator")]
    NoGrantee(String),
    #[error("no active support grant for this operator")]
    NoActiveGrant,
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error(transparent)]
    Mail(#[from] mail::MailError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<db::Error> for SupportError {
    fn from(e: db::Error) -> Self {
        SupportError::Store(e.into())
    }
}

/// What a grant reaches.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub collections: Vec<String>,
    /// `read_only` or `read_write`.
    pub access: String,
    #[serde(default)]
    pub files: bool,
}

impl Scope {
    fn check(&self) -> Result<(), SupportError> {
        if self.collections.is_empty() || self.collections.len() > 50 {
            return Err(SupportError::Invalid(
                "scope.collections names 1-50 collections",
            ));
        }
        if !self.collections.iter().all(|c| crate::access::is_name(c)) {
            return Err(SupportError::Invalid(
                "scope.collections: names match [a-z][a-z0-9_]{0,62}",
            ));
        }
        if !matches!(self.access.as_str(), "read_only" | "read_write") {
            return Err(SupportError::Invalid(
                "scope.access is read_only or read_write",
            ));
        }
        Ok(())
    }

    /// What a principal under this scope may do: read (and with
    /// `read_write` write) the named collections' records, personal values
    /// included; nothing else.
    pub fn abilities(&self) -> Abilities {
        let mut abilities = Abilities::default();
        abilities.grant(&Grant::General(
            crate::access::Permission::RecordsReadPersonal,
        ));
        for c in &self.collections {
            abilities.grant(&Grant::Read(c.clone()));
            if self.access == "read_write" {
                abilities.grant(&Grant::Write(c.clone()));
            }
        }
        abilities
    }
}

fn check_reason_and_hours(reason: &str, hours: i64) -> Result<(), SupportError> {
    let length = reason.trim().chars().count();
    if !(10..=1000).contains(&length) {
        return Err(SupportError::Invalid("reason is 10-1000 characters"));
    }
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(SupportError::Invalid("duration_hours is 1-72"));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    pub tenant: String,
    pub scope: Scope,
    pub reason: String,
    pub duration_hours: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLegalOrder {
    pub tenant: String,
    /// The support operator the order lets in, by e-mail.
    pub grantee: String,
    pub scope: Scope,
    pub reason: String,
    pub duration_hours: i64,
    pub reference: String,
    pub authority: String,
    /// Whether the tenant may be told now.
    pub notify: bool,
}

/// A grant as both sides see it.
#[derive(Clone, Debug, Serialize)]
pub struct GrantView {
    pub id: String,
    /// What the operator sends as `X-Support-Grant`.
    pub handle: String,
    /// `consent` or `legal_order`.
    pub kind: String,
    pub operator_email: String,
    pub scope: Scope,
    pub reason: String,
    pub duration_hours: i64,
    pub legal_reference: Option<String>,
    pub legal_authority: Option<String>,
    pub notify: bool,
    pub released_at: Option<String>,
    /// `pending`, `active`, `expired`, `denied` or `revoked`.
    pub state: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_by: Option<String>,
    pub revoked_at: Option<String>,
    pub created_at: String,
    #[serde(skip)]
    operator_id: String,
    #[serde(skip)]
    status: String,
}

impl GrantView {
    fn from_row(tenant: &str, row: &db::Row) -> Result<GrantView, SupportError> {
        let collections: String = row.try_get("collections")?;
        let status: String = row.try_get("status")?;
        let expires_at: Option<String> = row.try_get("expires_at")?;
        let now = crate::clock::now();
        let state = match status.as_str() {
            "approved" if expires_at.as_deref().is_some_and(|e| e <= now.as_str()) => "expired",
            "approved" => "active",
            other => other,
        }
        .to_owned();
        let id: String = row.try_get("id")?;
        Ok(GrantView {
            handle: format!("{tenant}:{id}"),
            id,
            kind: row.try_get("kind")?,
            operator_email: row.try_get("operator_email")?,
            scope: Scope {
                collections: serde_json::from_str(&collections)
                    .map_err(|e| StoreError::Corrupt(format!("grant collections: {e}")))?,
                access: row.try_get("access")?,
                files: row.try_get::<i64, _>("files")? != 0,
            },
            reason: row.try_get("reason")?,
            duration_hours: row.try_get("duration_hours")?,
            legal_reference: row.try_get("legal_reference")?,
            legal_authority: row.try_get("legal_authority")?,
            notify: row.try_get::<i64, _>("notify")? != 0,
            released_at: row.try_get("released_at")?,
            state,
            decided_by: row.try_get("decided_by")?,
            decided_at: row.try_get("decided_at")?,
            expires_at,
            revoked_by: row.try_get("revoked_by")?,
            revoked_at: row.try_get("revoked_at")?,
            created_at: row.try_get("created_at")?,
            operator_id: row.try_get("operator_id")?,
            status,
        })
    }

    /// Hidden from the tenant: a legal order that may not be told yet.
    fn hidden(&self) -> bool {
        self.kind == "legal_order" && !self.notify && self.released_at.is_none()
    }

    fn image(&self) -> Value {
        json!({
            "kind": self.kind, "operator_email": self.operator_email, "scope": self.scope,
            "reason": self.reason, "duration_hours": self.duration_hours,
            "legal_reference": self.legal_reference, "legal_authority": self.legal_authority,
            "notify": self.notify, "released_at": self.released_at, "status": self.status,
            "decided_by": self.decided_by, "decided_at": self.decided_at,
            "expires_at": self.expires_at, "revoked_by": self.revoked_by,
            "revoked_at": self.revoked_at,
        })
    }
}

const COLUMNS: &str = "id, kind, operator_id, operator_email, collections, access, files, reason, \
     duration_hours, legal_reference, legal_authority, notify, released_at, status, decided_by, \
     decided_at, expires_at, revoked_by, revoked_at, created_at";

/// The actor an operator is in a tenant's trail.
pub fn operator_actor(operator: &OperatorPrincipal) -> Actor {
    Actor {
        kind: ActorKind::Operator,
        id: Some(format!("operator:{}", operator.id)),
        email: Some(operator.email.clone()),
    }
}

async fn tenant(store: &Store, slug: &str) -> Result<TenantScope, SupportError> {
    crate::tenancy::find_active_by_slug(store, slug)
        .await?
        .ok_or_else(|| SupportError::NoTenant(slug.to_owned()))
}

/// `<tenant id>:<grant id>`, both UUIDs.
fn parse_handle(handle: &str) -> Option<(TenantScope, String)> {
    let (tenant, id) = handle.split_once(':')?;
    let tenant = TenantId::parse(tenant)?;
    uuid::Uuid::parse_str(id).ok()?;
    Some((TenantScope::trusted(tenant), id.to_owned()))
}

async fn find(tx: &mut WriteTx, id: &str) -> Result<GrantView, SupportError> {
    let tenant = tx.scope().id_str().to_owned();
    let row = db::query(format!(
        "SELECT {COLUMNS} FROM support_grants WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(&tenant)
    .bind(id)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(SupportError::NotFound)?;
    GrantView::from_row(&tenant, &row)
}

/// Mails each active admin of the tenant, when mail is on.
async fn mail_admins(
    tx: &mut WriteTx,
    post: &crate::identity::Post,
    mail_on: bool,
    template: &'static str,
    grant: &GrantView,
) -> Result<(), SupportError> {
    if !mail_on {
        return Ok(());
    }
    let scope = tx.scope().clone();
    let letterhead = mail::letterhead_in(tx.conn(), &scope).await?;
    let admins: Vec<String> = db::query_scalar(
        "SELECT email FROM users WHERE tenant_id = $1 AND status = 'active' \
         AND (',' || role || ',') LIKE '%,admin,%'",
    )
    .bind(scope.id_str())
    .fetch_all(tx.conn())
    .await?;
    let vault = post.vault.in_write();
    for to in admins {
        mail::enqueue(
            tx,
            &vault,
            &letterhead,
            mail::Mail {
                to,
                template,
                values: vec![
                    ("operator", grant.operator_email.clone()),
                    ("reason", grant.reason.clone()),
                    ("collections", grant.scope.collections.join(", ")),
                    ("access", grant.scope.access.replace('_', " ")),
                    ("hours", grant.duration_hours.to_string()),
                    ("grant", grant.id.clone()),
                    (
                        "reference",
                        grant.legal_reference.clone().unwrap_or_default(),
                    ),
                    (
                        "authority",
                        grant.legal_authority.clone().unwrap_or_default(),
                    ),
                ],
            },
        )
        .await?;
    }
    Ok(())
}

struct Insert {
    kind: &'static str,
    operator_id: String,
    operator_email: String,
    scope: Scope,
    reason: String,
    hours: i64,
    legal: Option<(String, String, String)>,
    notify: bool,
    approved: bool,
}

async fn insert(tx: &mut WriteTx, new: Insert) -> Result<GrantView, SupportError> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = crate::clock::now();
    let tenant = tx.scope().id_str().to_owned();
    let (reference, authority, recorded_by) = match new.legal.clone() {
        Some((reference, authority, by)) => (Some(reference), Some(authority), Some(by)),
        None => (None, None, None),
    };
    let expires = new
        .approved
        .then(|| crate::clock::in_seconds(new.hours * 3600));
    db::query(
        "INSERT INTO support_grants (id, tenant_id, kind, operator_id, operator_email, \
         collections, access, files, reason, duration_hours, legal_reference, legal_authority, \
         recorded_by, notify, status, decided_by, decided_at, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19)",
    )
    .bind(&id)
    .bind(&tenant)
    .bind(new.kind)
    .bind(&new.operator_id)
    .bind(&new.operator_email)
    .bind(json!(new.scope.collections).to_string())
    .bind(&new.scope.access)
    .bind(i64::from(new.scope.files))
    .bind(new.reason.trim())
    .bind(new.hours)
    .bind(&reference)
    .bind(&authority)
    .bind(&recorded_by)
    .bind(i64::from(new.notify))
    .bind(if new.approved { "approved" } else { "pending" })
    .bind(new.approved.then(|| recorded_by.clone()).flatten())
    .bind(new.approved.then(|| now.clone()))
    .bind(&expires)
    .bind(&now)
    .execute(tx.conn())
    .await?;
    let grant = find(tx, &id).await?;
    tx.record(Change::of(
        "support_grant",
        id.clone(),
        JournalOp::Insert,
        None,
        Some(grant.image()),
    ));
    tx.set_target("support_grant", id);
    Ok(grant)
}

/// A support operator asks a tenant for access; its admins are mailed.
pub async fn request(
    store: &Store,
    post: &crate::identity::Post,
    operator: &OperatorPrincipal,
    meta: &RequestMeta,
    new: NewRequest,
) -> Result<GrantView, SupportError> {
    operator.require(&[OperatorRole::Support])?;
    new.scope.check()?;
    check_reason_and_hours(&new.reason, new.duration_hours)?;
    let scope = tenant(store, &new.tenant).await?;
    let permit = Permit::operator(scope, operator_actor(operator));
    let (post, mail_on) = (post.clone(), post.mail_on(store));
    let insert_it = Insert {
        kind: "consent",
        operator_id: operator.id.clone(),
        operator_email: operator.email.clone(),
        scope: new.scope,
        reason: new.reason,
        hours: new.duration_hours,
        legal: None,
        notify: true,
        approved: false,
    };
    store
        .write(&permit, meta, "support.request", move |tx| {
            Box::pin(async move {
                let grant = insert(tx, insert_it).await?;
                mail_admins(tx, &post, mail_on, "support_request", &grant).await?;
                Ok(grant)
            })
        })
        .await
}

/// A security officer records a legal order: access for the named support
/// operator at once; the tenant is told unless the order forbids it.
pub async fn legal_order(
    store: &Store,
    post: &crate::identity::Post,
    officer: &OperatorPrincipal,
    meta: &RequestMeta,
    new: NewLegalOrder,
) -> Result<GrantView, SupportError> {
    officer.require(&[OperatorRole::SecurityOfficer])?;
    new.scope.check()?;
    check_reason_and_hours(&new.reason, new.duration_hours)?;
    for (text, what) in [
        (&new.reference, "reference is 1-200 characters"),
        (&new.authority, "authority is 1-200 characters"),
    ] {
        if !(1..=200).contains(&text.trim().chars().count()) {
            return Err(SupportError::Invalid(what));
        }
    }
    let grantee = super::list(store)
        .await?
        .into_iter()
        .find(|o| {
            o.email == new.grantee.trim().to_lowercase()
                && o.role == "support"
                && o.status == "active"
        })
        .ok_or_else(|| SupportError::NoGrantee(new.grantee.clone()))?;
    let scope = tenant(store, &new.tenant).await?;
    let permit = Permit::operator(scope, operator_actor(officer));
    let (post, mail_on) = (post.clone(), post.mail_on(store) && new.notify);
    let insert_it = Insert {
        kind: "legal_order",
        operator_id: grantee.id,
        operator_email: grantee.email,
        scope: new.scope,
        reason: new.reason,
        hours: new.duration_hours,
        legal: Some((
            new.reference.trim().to_owned(),
            new.authority.trim().to_owned(),
            format!("operator:{}", officer.id),
        )),
        notify: new.notify,
        approved: true,
    };
    store
        .write(&permit, meta, "support.legal_order", move |tx| {
            Box::pin(async move {
                let grant = insert(tx, insert_it).await?;
                mail_admins(tx, &post, mail_on, "support_legal_order", &grant).await?;
                Ok(grant)
            })
        })
        .await
}

/// A grant changes state, by the tenant's admins or the security officer.
async fn change(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    action: &'static str,
    id: &str,
    work: impl FnOnce(&mut GrantView, &str) -> Result<(), SupportError> + Send + 'static,
    then_mail: Option<(crate::identity::Post, bool, &'static str)>,
) -> Result<GrantView, SupportError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(SupportError::NotFound);
    }
    let id = id.to_owned();
    let by = permit.actor().id.clone().unwrap_or_default();
    store
        .write(permit, meta, action, move |tx| {
            Box::pin(async move {
                let before = find(tx, &id).await?;
                let mut after = before.clone();
                work(&mut after, &by)?;
                db::query(
                    "UPDATE support_grants SET status = $1, decided_by = $2, decided_at = $3, \
                     expires_at = $4, revoked_by = $5, revoked_at = $6, released_at = $7 \
                     WHERE tenant_id = $8 AND id = $9",
                )
                .bind(&after.status)
                .bind(&after.decided_by)
                .bind(&after.decided_at)
                .bind(&after.expires_at)
                .bind(&after.revoked_by)
                .bind(&after.revoked_at)
                .bind(&after.released_at)
                .bind(tx.scope().id_str().to_owned())
                .bind(&id)
                .execute(tx.conn())
                .await?;
                let after = find(tx, &id).await?;
                tx.record(Change::of(
                    "support_grant",
                    id.clone(),
                    JournalOp::Update,
                    Some(before.image()),
                    Some(after.image()),
                ));
                tx.set_target("support_grant", id.clone());
                if let Some((post, true, template)) = &then_mail {
                    mail_admins(tx, post, true, template, &after).await?;
                }
                Ok(after)
            })
        })
        .await
}

/// The tenant's admins approve (the grant runs from now) or deny a request.
pub async fn decide(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    id: &str,
    approve: bool,
) -> Result<GrantView, SupportError> {
    let action = if approve {
        "support.approve"
    } else {
        "support.deny"
    };
    change(
        store,
        permit,
        meta,
        action,
        id,
        move |grant, by| {
            if grant.hidden() {
                return Err(SupportError::NotFound);
            }
            if grant.status != "pending" {
                return Err(SupportError::WrongState(grant.state.clone(), "pending"));
            }
            let now = crate::clock::now();
            grant.status = if approve { "approved" } else { "denied" }.into();
            grant.decided_by = Some(by.to_owned());
            grant.decided_at = Some(now);
            if approve {
                grant.expires_at = Some(crate::clock::in_seconds(grant.duration_hours * 3600));
            }
            Ok(())
        },
        None,
    )
    .await
}

/// The tenant's admins end a grant now (pending or active).
pub async fn revoke(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    id: &str,
) -> Result<GrantView, SupportError> {
    change(
        store,
        permit,
        meta,
        "support.revoke",
        id,
        |grant, by| {
            if grant.hidden() {
                return Err(SupportError::NotFound);
            }
            if !matches!(grant.state.as_str(), "pending" | "active") {
                return Err(SupportError::WrongState(
                    grant.state.clone(),
                    "pending or active",
                ));
            }
            grant.status = "revoked".into();
            grant.revoked_by = Some(by.to_owned());
            grant.revoked_at = Some(crate::clock::now());
            Ok(())
        },
        None,
    )
    .await
}

/// The security officer lets the tenant know of a legal order now: the
/// grant and its trail show to the tenant from here on, and its admins
/// are mailed.
pub async fn release(
    store: &Store,
    post: &crate::identity::Post,
    officer: &OperatorPrincipal,
    meta: &RequestMeta,
    handle: &str,
) -> Result<GrantView, SupportError> {
    officer.require(&[OperatorRole::SecurityOfficer])?;
    let (scope, id) = parse_handle(handle).ok_or(SupportError::NotFound)?;
    let permit = Permit::operator(scope, operator_actor(officer));
    let mail_on = post.mail_on(store);
    change(
        store,
        &permit,
        meta,
        "support.legal_order_released",
        &id,
        |grant, _| {
            if grant.kind != "legal_order" || grant.released_at.is_some() || grant.notify {
                return Err(SupportError::WrongState(
                    grant.state.clone(),
                    "a legal order not yet told",
                ));
            }
            grant.released_at = Some(crate::clock::now());
            Ok(())
        },
        Some((post.clone(), mail_on, "support_legal_order")),
    )
    .await
}

/// A grant as the operator it is for (or a security officer) sees it.
pub async fn get_for_operator(
    store: &Store,
    operator: &OperatorPrincipal,
    handle: &str,
) -> Result<GrantView, SupportError> {
    let (scope, id) = parse_handle(handle).ok_or(SupportError::NotFound)?;
    let mut tx = store.read(&scope).await?;
    let row = db::query(format!(
        "SELECT {COLUMNS} FROM support_grants WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(scope.id_str())
    .bind(&id)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(SupportError::NotFound)?;
    let grant = GrantView::from_row(scope.id_str(), &row)?;
    if grant.operator_id != operator.id && operator.role != OperatorRole::SecurityOfficer {
        return Err(SupportError::NotFound);
    }
    Ok(grant)
}

/// A grant with what was accessed under it.
#[derive(Serialize)]
pub struct GrantWithAccesses {
    #[serde(flatten)]
    pub grant: GrantView,
    pub accesses_count: i64,
    /// The latest 100 accesses, newest first.
    pub accesses: Vec<Value>,
}

/// Every grant ever made for the tenant (but legal orders it may not be
/// told of yet), each with what was accessed under it.
pub async fn list_for_tenant(
    store: &Store,
    permit: &Permit,
) -> Result<Vec<GrantWithAccesses>, SupportError> {
    let tenant = permit.scope().id_str();
    let mut tx = store.read(permit.scope()).await?;
    let rows = db::query(format!(
        "SELECT {COLUMNS} FROM support_grants WHERE tenant_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(tenant)
    .fetch_all(tx.conn())
    .await?;
    let mut out = Vec::new();
    for row in &rows {
        let grant = GrantView::from_row(tenant, row)?;
        if grant.hidden() {
            continue;
        }
        let count: i64 = db::query_scalar(
            "SELECT COUNT(*) FROM audit_events WHERE tenant_id = $1 AND action = 'support.access' \
             AND target_type = 'support_grant' AND target_id = $2",
        )
        .bind(tenant)
        .bind(&grant.id)
        .fetch_one(tx.conn())
        .await?;
        let events: Vec<(String, Option<String>)> = db::query_as(
            "SELECT occurred_at, changes FROM audit_events WHERE tenant_id = $1 \
             AND action = 'support.access' AND target_type = 'support_grant' AND target_id = $2 \
             ORDER BY seq DESC LIMIT 100",
        )
        .bind(tenant)
        .bind(&grant.id)
        .fetch_all(tx.conn())
        .await?;
        let accesses = events
            .into_iter()
            .map(|(at, changes)| {
                let mut access: Value = changes
                    .and_then(|c| serde_json::from_str(&c).ok())
                    .unwrap_or_else(|| json!({}));
                access["occurred_at"] = json!(at);
                access
            })
            .collect();
        out.push(GrantWithAccesses {
            grant,
            accesses_count: count,
            accesses,
        });
    }
    Ok(out)
}

/// The ids of the tenant's grants it may not be told of yet: its trail
/// and access log leave out what concerns them until they are released.
pub async fn hidden_ids(store: &Store, scope: &TenantScope) -> Result<Vec<String>, StoreError> {
    if !store.schema_has(SCHEMA) {
        return Ok(Vec::new());
    }
    let mut tx = store.read(scope).await?;
    let ids = db::query_scalar(
        "SELECT id FROM support_grants WHERE tenant_id = $1 AND kind = 'legal_order' \
         AND notify = 0 AND released_at IS NULL",
    )
    .bind(scope.id_str())
    .fetch_all(tx.conn())
    .await?;
    Ok(ids)
}

/// The grant `handle` names, if it is active now and for `operator`: the
/// tenant's scope, the grant and what it allows.
pub async fn active_for(
    store: &Store,
    operator: &OperatorPrincipal,
    handle: &str,
) -> Result<(TenantScope, Arc<SupportGrant>, Abilities), SupportError> {
    if !store.schema_has(SCHEMA) {
        return Err(SupportError::NoActiveGrant);
    }
    let (scope, id) = parse_handle(handle).ok_or(SupportError::NoActiveGrant)?;
    let mut tx = store.read(&scope).await?;
    let row = db::query(format!(
        "SELECT {COLUMNS} FROM support_grants WHERE tenant_id = $1 AND id = $2 \
         AND status = 'approved' AND expires_at > $3 AND EXISTS (SELECT 1 FROM tenants t \
         WHERE t.id = support_grants.tenant_id AND t.status = 'active')"
    ))
    .bind(scope.id_str())
    .bind(&id)
    .bind(crate::clock::now())
    .fetch_optional(tx.conn())
    .await?
    .ok_or(SupportError::NoActiveGrant)?;
    let grant = GrantView::from_row(scope.id_str(), &row)?;
    if grant.operator_id != operator.id {
        return Err(SupportError::NoActiveGrant);
    }
    let abilities = grant.scope.abilities();
    let support = SupportGrant {
        id: grant.id.clone(),
        reason: grant.reason.clone(),
        files: grant.scope.files,
        expires_at: grant.expires_at.clone().unwrap_or_default(),
    };
    Ok((scope, Arc::new(support), abilities))
}

/// Records one request under a grant in the tenant's trail: the grant, its
/// reason, the operation, method and path (AUD-5).
pub async fn record_access(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    grant: &SupportGrant,
    operation: &str,
    (method, path): (&str, &str),
) -> Result<(), StoreError> {
    let details = json!({
        "grant": grant.id, "reason": grant.reason, "operation": operation,
        "method": method, "path": path,
    });
    let id = grant.id.clone();
    store
        .write(permit, meta, "support.access", move |tx| {
            Box::pin(async move {
                tx.set_target("support_grant", id);
                tx.set_details(details);
                Ok::<_, StoreError>(())
            })
        })
        .await
}

/// For the posture check: active grants, and accesses recorded under a
/// grant after it had ended (none can be: the check refuses them).
pub async fn census(store: &Store, scopes: &[TenantScope]) -> Result<(i64, i64, i64), StoreError> {
    let (mut active, mut hidden, mut late) = (0i64, 0i64, 0i64);
    if !store.schema_has(SCHEMA) {
        return Ok((0, 0, 0));
    }
    let now = crate::clock::now();
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        active += db::query_scalar::<i64>(
            "SELECT COUNT(*) FROM support_grants WHERE tenant_id = $1 AND status = 'approved' \
             AND expires_at > $2",
        )
        .bind(scope.id_str())
        .bind(&now)
        .fetch_one(tx.conn())
        .await?;
        hidden += db::query_scalar::<i64>(
            "SELECT COUNT(*) FROM support_grants WHERE tenant_id = $1 AND kind = 'legal_order' \
             AND notify = 0 AND released_at IS NULL",
        )
        .bind(scope.id_str())
        .fetch_one(tx.conn())
        .await?;
        let ends: Vec<(String, Option<String>, Option<String>)> = db::query_as(
            "SELECT id, expires_at, revoked_at FROM support_grants WHERE tenant_id = $1 \
             AND status IN ('approved', 'revoked')",
        )
        .bind(scope.id_str())
        .fetch_all(tx.conn())
        .await?;
        for (id, expires, revoked) in ends {
            let end = match (expires, revoked) {
                (Some(e), Some(r)) => e.min(r),
                (Some(e), None) => e,
                (None, Some(r)) => r,
                (None, None) => continue,
            };
            late += db::query_scalar::<i64>(
                "SELECT COUNT(*) FROM audit_events WHERE tenant_id = $1 \
                 AND action = 'support.access' AND target_type = 'support_grant' \
                 AND target_id = $2 AND occurred_at > $3",
            )
            .bind(scope.id_str())
            .bind(&id)
            .bind(&end)
            .fetch_one(tx.conn())
            .await?;
        }
    }
    Ok((active, hidden, late))
}
