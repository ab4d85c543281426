//! Per-tenant settings a tenant admin controls: the audit retention (AUD-3:
//! at least 90 days, 365 by default) and the IP allow-list (NET-2, see
//! `allowlist`). Changes go through the write path, so each one is
//! journaled and audited with its before/after.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::TenancyError;
use crate::access::Permission;
use crate::context::Permit;
use crate::context::RequestMeta;

/// An IPv4 CIDR block, as a JSON Schema pattern.
const IPV4_BLOCK: &str = "^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])$";
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::guard::Granted;
use crate::http::state::AppState;
use crate::store::db;
use crate::store::{Change, JournalOp, Store, StoreError};

/// The schema migration that brought the session settings.
pub const SESSION_SETTINGS_SCHEMA: i64 = 10;
/// Bounds of `session_idle_minutes` (0: none) and `session_max_hours` (0:
/// the instance's `session_ttl_hours`).
pub const SESSION_IDLE_MINUTES: std::ops::RangeInclusive<i64> = 5..=10_080;
pub const SESSION_MAX_HOURS: std::ops::RangeInclusive<i64> = 1..=8_760;

pub const MIN_AUDIT_RETENTION_DAYS: i64 = 90;
pub const MAX_AUDIT_RETENTION_DAYS: i64 = 36_500;

#[derive(Debug, Clone, Serialize)]
pub struct TenantSettings {
    pub audit_retention_days: i64,
    /// Addresses and CIDR blocks the tenant's users may come from; empty,
    /// everyone.
    pub ip_allowlist: Vec<String>,
    /// Minutes without a refresh after which a session ends (0: never).
    pub session_idle_minutes: i64,
    /// Hours after which any session ends (0: the instance's lifetime).
    pub session_max_hours: i64,
    /// The language of the tenant's mails: a code of `templates/mail/`.
    pub language: String,
    /// Who must have a second factor (IAM-3): `"off"`, `"all"`, or a list
    /// of roles.
    pub mfa_policy: serde_json::Value,
    /// Days a device that passed a second factor may skip it (IAM-3's
    /// trusted devices); 0: never.
    pub mfa_trust_days: i64,
    pub updated_at: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default, deserialize_with = "crate::json::present")]
    pub audit_retention_days: Option<i64>,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub ip_allowlist: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub session_idle_minutes: Option<i64>,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub session_max_hours: Option<i64>,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub language: Option<String>,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub mfa_policy: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub mfa_trust_days: Option<i64>,
    /// Saving a list that leaves out the caller's own address needs this.
    #[serde(default)]
    pub confirm_lockout: bool,
}

/// The longest a device may be trusted to skip the second factor.
const MAX_TRUST_DAYS: i64 = 90;

/// Entries in one allow-list at most.
const MAX_ALLOWLIST: usize = 256;

fn settings_sql(store: &Store) -> String {
    // Columns a schema held back (migrate_until) does not have yet read as
    // their defaults.
    let list = if store.schema_has(super::allowlist::SCHEMA) {
        "ip_allowlist"
    } else {
        "'[]' AS ip_allowlist"
    };
    let sessions = if store.schema_has(SESSION_SETTINGS_SCHEMA) {
        "session_idle_minutes, session_max_hours"
    } else {
        "0, 0"
    };
    let language = if store.schema_has(crate::mail::SCHEMA) {
        "language"
    } else {
        "'en'"
    };
    let mfa = if store.schema_has(crate::identity::mfa::SCHEMA) {
        "mfa_policy"
    } else {
        "'off'"
    };
    let trust = if store.schema_has(crate::identity::mfa::passkeys::SCHEMA) {
        "mfa_trust_days"
    } else {
        "0"
    };
    format!(
        "SELECT audit_retention_days, {list}, updated_at, {sessions}, {language}, {mfa}, \
         {trust} FROM tenant_settings WHERE tenant_id = $1"
    )
}

fn settings_from(row: &db::Row) -> Result<TenantSettings, TenancyError> {
    let list: String = row.try_get(1)?;
    Ok(TenantSettings {
        audit_retention_days: row.try_get(0)?,
        ip_allowlist: serde_json::from_str(&list)
            .map_err(|e| StoreError::Corrupt(format!("ip_allowlist: {e}")))?,
        updated_at: row.try_get(2)?,
        session_idle_minutes: row.try_get(3)?,
        session_max_hours: row.try_get(4)?,
        language: row.try_get(5)?,
        mfa_policy: crate::identity::mfa::Policy::from_stored(&row.try_get::<String, _>(6)?)
            .to_json(),
        mfa_trust_days: row.try_get(7)?,
    })
}

pub async fn get_settings(store: &Store, permit: &Permit) -> Result<TenantSettings, TenancyError> {
    let mut tx = store.read(permit.scope()).await?;
    let row = db::query(settings_sql(store))
        .bind(permit.scope().id_str())
        .fetch_one(tx.conn())
        .await?;
    settings_from(&row)
}

pub async fn update_settings(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    patch: SettingsPatch,
) -> Result<TenantSettings, TenancyError> {
    if let Some(days) = patch.audit_retention_days
        && !(MIN_AUDIT_RETENTION_DAYS..=MAX_AUDIT_RETENTION_DAYS).contains(&days)
    {
        return Err(TenancyError::InvalidSetting(format!(
            "audit_retention_days must be between {MIN_AUDIT_RETENTION_DAYS} and {MAX_AUDIT_RETENTION_DAYS}"
        )));
    }
    let bounds = [
        (
            "session_idle_minutes",
            "no idle bound",
            patch.session_idle_minutes,
            SESSION_IDLE_MINUTES,
        ),
        (
            "session_max_hours",
            "the instance's lifetime",
            patch.session_max_hours,
            SESSION_MAX_HOURS,
        ),
    ];
    for (name, zero, value, range) in bounds {
        if let Some(value) = value {
            if value != 0 && !range.contains(&value) {
                return Err(TenancyError::InvalidSetting(format!(
                    "{name} is 0 ({zero}) or {}-{}",
                    range.start(),
                    range.end()
                )));
            }
            if !store.schema_has(SESSION_SETTINGS_SCHEMA) {
                return Err(TenancyError::InvalidSetting(format!(
                    "the database schema is held back before {name} (migrate_until)"
                )));
            }
        }
    }
    if let Some(language) = &patch.language {
        if !crate::mail::templates::is_language(language) {
            let known: Vec<&str> = crate::mail::templates::languages()
                .iter()
                .map(|(code, _)| *code)
                .collect();
            return Err(TenancyError::InvalidSetting(format!(
                "language is one of {}",
                known.join(", ")
            )));
        }
        if !store.schema_has(crate::mail::SCHEMA) {
            return Err(TenancyError::InvalidSetting(
                "the database schema is held back before language (migrate_until)".into(),
            ));
        }
    }
    let mfa_policy = match &patch.mfa_policy {
        None => None,
        Some(value) => {
            use crate::identity::mfa::Policy;
            let policy = match value {
                serde_json::Value::String(s) if s == "off" => Policy::Off,
                serde_json::Value::String(s) if s == "all" => Policy::All,
                serde_json::Value::Array(items) if !items.is_empty() => {
                    let mut roles = Vec::new();
                    for item in items {
                        match item.as_str().and_then(crate::access::Role::parse) {
                            Some(role) => roles.push(role.as_str().to_owned()),
                            None => {
                                return Err(TenancyError::InvalidSetting(
                                    "mfa_policy roles are admin, member, viewer or auditor".into(),
                                ));
                            }
                        }
                    }
                    let given = roles.len();
                    roles.sort();
                    roles.dedup();
                    if roles.len() != given {
                        return Err(TenancyError::InvalidSetting(
                            "mfa_policy names a role twice".into(),
                        ));
                    }
                    Policy::Roles(roles)
                }
                _ => {
                    return Err(TenancyError::InvalidSetting(
                        "mfa_policy is \"off\", \"all\" or a non-empty list of roles".into(),
                    ));
                }
            };
            if !store.schema_has(crate::identity::mfa::SCHEMA) {
                return Err(TenancyError::InvalidSetting(
                    "the database schema is held back before mfa_policy (migrate_until)".into(),
                ));
            }
            Some(policy)
        }
    };
    if let Some(days) = patch.mfa_trust_days {
        if !(0..=MAX_TRUST_DAYS).contains(&days) {
            return Err(TenancyError::InvalidSetting(format!(
                "mfa_trust_days is 0 (never) to {MAX_TRUST_DAYS}"
            )));
        }
        if !store.schema_has(crate::identity::mfa::passkeys::SCHEMA) {
            return Err(TenancyError::InvalidSetting(
                "the database schema is held back before mfa_trust_days (migrate_until)".into(),
            ));
        }
    }
    if let Some(list) = &patch.ip_allowlist {
        if !store.schema_has(super::allowlist::SCHEMA) {
            return Err(TenancyError::InvalidAllowList(
                "the database schema is held back before allow-lists (migrate_until)".into(),
            ));
        }
        if list.len() > MAX_ALLOWLIST {
            return Err(TenancyError::InvalidAllowList(format!(
                "at most {MAX_ALLOWLIST} entries"
            )));
        }
        let parsed =
            super::allowlist::List::parse(list.clone()).map_err(TenancyError::InvalidAllowList)?;
        // An admin must not lock themselves out by a typo.
        if !parsed.admits(meta.ip.as_deref()) && !patch.confirm_lockout {
            return Err(TenancyError::WouldLockOut(
                meta.ip.clone().unwrap_or_else(|| "unknown".into()),
            ));
        }
    }
    let with_list = store.schema_has(super::allowlist::SCHEMA);
    let with_sessions = store.schema_has(SESSION_SETTINGS_SCHEMA);
    let with_language = store.schema_has(crate::mail::SCHEMA);
    let with_mfa = store.schema_has(crate::identity::mfa::SCHEMA);
    let with_trust = store.schema_has(crate::identity::mfa::passkeys::SCHEMA);
    let select = settings_sql(store);
    store
        .write(permit, meta, "tenant.settings.update", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                // Read in the write job: two changes at once each see the
                // other's result, never a stale before-image.
                let row = db::query(select.as_str())
                    .bind(&tenant)
                    .fetch_one(tx.conn())
                    .await?;
                let before = settings_from(&row)?;
                let after = TenantSettings {
                    audit_retention_days: patch
                        .audit_retention_days
                        .unwrap_or(before.audit_retention_days),
                    ip_allowlist: patch
                        .ip_allowlist
                        .unwrap_or_else(|| before.ip_allowlist.clone()),
                    session_idle_minutes: patch
                        .session_idle_minutes
                        .unwrap_or(before.session_idle_minutes),
                    session_max_hours: patch.session_max_hours.unwrap_or(before.session_max_hours),
                    language: patch
                        .language
                        .clone()
                        .unwrap_or_else(|| before.language.clone()),
                    mfa_policy: mfa_policy
                        .as_ref()
                        .map(|p| p.to_json())
                        .unwrap_or_else(|| before.mfa_policy.clone()),
                    mfa_trust_days: patch.mfa_trust_days.unwrap_or(before.mfa_trust_days),
                    updated_at: crate::clock::now(),
                };
                let list = serde_json::to_string(&after.ip_allowlist)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let update = if with_trust {
                    "UPDATE tenant_settings SET audit_retention_days = $1, ip_allowlist = $2, \
                     updated_at = $3, session_idle_minutes = $5, session_max_hours = $6, \
                     language = $7, mfa_policy = $8, mfa_trust_days = $9 WHERE tenant_id = $4"
                } else if with_mfa {
                    "UPDATE tenant_settings SET audit_retention_days = $1, ip_allowlist = $2, \
                     updated_at = $3, session_idle_minutes = $5, session_max_hours = $6, \
                     language = $7, mfa_policy = $8 WHERE tenant_id = $4"
                } else if with_language {
                    "UPDATE tenant_settings SET audit_retention_days = $1, ip_allowlist = $2, \
                     updated_at = $3, session_idle_minutes = $5, session_max_hours = $6, \
                     language = $7 WHERE tenant_id = $4"
                } else if with_sessions {
                    "UPDATE tenant_settings SET audit_retention_days = $1, ip_allowlist = $2, \
                     updated_at = $3, session_idle_minutes = $5, session_max_hours = $6 \
                     WHERE tenant_id = $4"
                } else if with_list {
                    "UPDATE tenant_settings SET audit_retention_days = $1, ip_allowlist = $2, \
                     updated_at = $3 WHERE tenant_id = $4"
                } else {
                    "UPDATE tenant_settings SET audit_retention_days = $1, updated_at = $3 \
                     WHERE tenant_id = $4"
                };
                let mut query = db::query(update)
                    .bind(after.audit_retention_days)
                    .bind(list)
                    .bind(&after.updated_at)
                    .bind(&tenant);
                if with_sessions {
                    query = query
                        .bind(after.session_idle_minutes)
                        .bind(after.session_max_hours);
                }
                if with_language {
                    query = query.bind(after.language.clone());
                }
                if with_mfa {
                    let stored = match &mfa_policy {
                        Some(policy) => policy.to_stored(),
                        None => {
                            crate::identity::mfa::Policy::from_json(&before.mfa_policy).to_stored()
                        }
                    };
                    query = query.bind(stored);
                }
                if with_trust {
                    query = query.bind(after.mfa_trust_days);
                }
                query.execute(tx.conn()).await?;
                tx.record(Change {
                    entity: "tenant_settings",
                    entity_id: tenant,
                    op: JournalOp::Update,
                    before: Some(json!(before)),
                    after: Some(json!(after)),
                    sensitive: vec![],
                    diff_of: None,
                });
                Ok(after)
            })
        })
        .await
}

pub fn router() -> Api {
    Api::new()
        .route(
            Op::new("GET", "/api/v1/tenant/settings", "The tenant's settings")
                .tag("tenant")
                .permission(Permission::SettingsManage, "tenant.settings.read"),
            get(read),
        )
        .route(
            Op::new(
                "PATCH",
                "/api/v1/tenant/settings",
                "Change the tenant's settings",
            )
            .tag("tenant")
            .permission(Permission::SettingsManage, "tenant.settings.update")
            .errors(&[409])
            .body(json!({"type": "object", "additionalProperties": false, "properties": {
                "audit_retention_days": {"type": "integer", "minimum": MIN_AUDIT_RETENTION_DAYS,
                                         "maximum": MAX_AUDIT_RETENTION_DAYS},
                "ip_allowlist": {"type": "array", "maxItems": MAX_ALLOWLIST,
                                 "items": {"type": "string",
                                           "description": "an address or CIDR block (IPv6 blocks too)",
                                           "anyOf": [{"format": "ipv4"}, {"format": "ipv6"},
                                                     {"pattern": IPV4_BLOCK}]}},
                "session_idle_minutes": {"type": "integer", "description":
                    "minutes without a refresh after which a session ends: 0 (never) or 5-10080",
                    "anyOf": [{"const": 0}, {"minimum": 5, "maximum": 10_080}]},
                "session_max_hours": {"type": "integer", "description":
                    "hours after which any session ends: 0 (the instance's) or 1-8760",
                    "minimum": 0, "maximum": 8_760},
                "language": {"enum": crate::mail::templates::languages().iter()
                                 .map(|(code, _)| *code).collect::<Vec<_>>(),
                             "description": "the language of the tenant's mails"},
                "mfa_policy": {"description":
                    "who must have a second factor: \"off\", \"all\", or a list of roles",
                    "anyOf": [{"enum": ["off", "all"]},
                              {"type": "array", "minItems": 1, "uniqueItems": true,
                               "items": {"enum": ["admin", "member", "viewer", "auditor"]}}]},
                "mfa_trust_days": {"type": "integer", "minimum": 0, "maximum": MAX_TRUST_DAYS,
                    "description": "days a device that passed a second factor may skip it, when \
                                    its user asks (trust_device); 0: never"},
                "confirm_lockout": {"type": "boolean",
                                    "description": "save a list that leaves out the caller's own address"}
            }})),
            axum::routing::patch(update),
        )
}

async fn read(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(get_settings(&state.store, &permit).await?))
}

async fn update(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        update_settings(&state.store, &permit, &meta, patch).await?,
    ))
}
