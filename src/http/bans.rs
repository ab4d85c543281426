//! Automatic temporary bans (NET-3), as fail2ban does: a client address
//! that earns more than `ban_after_strikes` strikes — `401`, `404` or
//! `405` answers (failed authentication, probing for ids, route
//! discovery) — within `ban_window_seconds` is refused with `403` for
//! `ban_seconds`, doubling for each ban that follows within a day of the
//! last one's end, up to 24 hours. A ban and its lifting are security
//! events (the instance's security log and syslog always; the audit trail
//! of the tenant the last strike was authenticated for, when there is one).
//! Operators list and lift bans with `strongroom bans list|lift IP`.
//! Addresses in `rate_limit_exempt` are never banned.
//!
//! Bans are rows of `ip_bans`, shared by every app server on one database;
//! each server keeps the active ones in memory and reads them again every
//! [`REFRESH`] and, on PostgreSQL, at once when another node announces one
//! ([`CHANNEL`]), so checking a request costs no database round trip.
//! Strikes are counted in memory on SQLite (one server per database) and
//! in `ip_strikes` on PostgreSQL, so strikes spread over nodes add up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::TrustedProxies;
use crate::context::{Outcome, Permit, RequestMeta, TenantId, TenantScope};
use crate::store::{Backend, Store, StoreError, db};

/// The schema migration that brought the ban tables.
pub const SCHEMA: i64 = 8;

/// The channel on which app servers announce a ban or its lifting.
pub const CHANNEL: &str = "strongroom_bans";

/// How often each server reads the active bans again at most.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The longest a ban lasts.
const LONGEST: Duration = Duration::from_secs(24 * 3600);

/// A ban that ended at most this long ago makes the next one twice as long.
const MEMORY: i64 = 24 * 3600;

/// Answers that count as a strike.
pub fn is_strike(status: u16) -> bool {
    matches!(status, 401 | 404 | 405)
}

/// When an address is banned, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct BanPolicy {
    pub strikes: u32,
    pub window: Duration,
    pub first: Duration,
}

impl BanPolicy {
    /// How long a ban of `level` (1, 2, …) lasts.
    fn length(&self, level: u32) -> Duration {
        let factor = 2u32.saturating_pow(level.saturating_sub(1).min(20));
        self.first.saturating_mul(factor).min(LONGEST)
    }
}

/// A ban as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Ban {
    pub ip: String,
    pub banned_at: String,
    pub until: String,
    pub level: i64,
    pub reason: String,
    pub lifted_at: Option<String>,
    pub lifted_by: Option<String>,
}

impl Ban {
    fn from_row(row: &db::Row) -> Result<Ban, db::Error> {
        Ok(Ban {
            ip: row.try_get(0)?,
            banned_at: row.try_get(1)?,
            until: row.try_get(2)?,
            level: row.try_get(3)?,
            reason: row.try_get(4)?,
            lifted_at: row.try_get(5)?,
            lifted_by: row.try_get(6)?,
        })
    }

    /// In force now: not lifted and not over.
    pub fn is_active(&self) -> bool {
        self.lifted_at.is_none()
            && crate::clock::parse_rfc3339(&self.until)
                .is_some_and(|until| until > time::OffsetDateTime::now_utc())
    }
}

const BAN_COLUMNS: &str = "ip, banned_at, until, level, reason, lifted_at, lifted_by";

/// This server's view of the bans, and its strike counts.
pub struct Bans {
    policy: BanPolicy,
    exempt: TrustedProxies,
    /// Active bans: address → end.
    active: RwLock<HashMap<IpAddr, time::OffsetDateTime>>,
    /// How many `active` holds, read without the lock: with no ban in
    /// force (nearly always) a request costs one load.
    banned: std::sync::atomic::AtomicUsize,
    /// Strikes in the current window, by address (SQLite).
    strikes: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Strike counts kept in memory at most; beyond, the oldest windows go.
const MAX_COUNTED: usize = 100_000;

impl Bans {
    /// When and for how long this server bans.
    pub fn policy(&self) -> BanPolicy {
        self.policy
    }

    pub fn new(policy: BanPolicy, exempt: TrustedProxies) -> Bans {
        Bans {
            policy,
            exempt,
            active: RwLock::new(HashMap::new()),
            banned: std::sync::atomic::AtomicUsize::new(0),
            strikes: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the bans now and then every [`REFRESH`], and on PostgreSQL
    /// whenever a node announces a change, for as long as `bans` lives.
    pub async fn start(bans: &Arc<Bans>, store: &Store) -> Result<(), StoreError> {
        if !store.schema_has(SCHEMA) {
            return Ok(());
        }
        bans.refresh(store).await?;
        let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
        let announced = wake.clone();
        store
            .on_announcement(CHANNEL, move |_| {
                let _ = announced.try_send(());
            })
            .await?;
        let weak: Weak<Bans> = Arc::downgrade(bans);
        let store = store.clone();
        tokio::spawn(async move {
            // Held here so that the channel stays open where nobody
            // announces anything (SQLite): the wait is then the timeout.
            let _wake = wake;
            loop {
                let _ = tokio::time::timeout(REFRESH, woken.recv()).await;
                let Some(bans) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = bans.refresh(&store).await {
                    tracing::warn!(error = %e, "could not read the bans");
                }
            }
        });
        Ok(())
    }

    /// Reads the active bans from the database.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let bans = active(store).await?;
        let mut map = HashMap::with_capacity(bans.len());
        for ban in bans {
            if let (Ok(ip), Some(until)) = (
                ban.ip.parse::<IpAddr>(),
                crate::clock::parse_rfc3339(&ban.until),
            ) {
                map.insert(ip, until);
            }
        }
        crate::metrics::get().bans_active.set(map.len() as i64);
        if let Ok(mut active) = self.active.write() {
            // A ban gone before its end was lifted, maybe by an operator's
            // CLI or another node: this server's security log says so too.
            let now = time::OffsetDateTime::now_utc();
            for (ip, until) in active.iter() {
                if *until > now && !map.contains_key(ip) {
                    tracing::warn!(target: "security", %ip, "client address ban lifted");
                }
            }
            self.banned
                .store(map.len(), std::sync::atomic::Ordering::Release);
            *active = map;
        }
        Ok(())
    }

    /// Seconds left on `ip`'s ban (rounded up), if it is banned.
    pub fn refused(&self, ip: IpAddr) -> Option<u64> {
        if self.banned.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return None;
        }
        let until = *self.active.read().ok()?.get(&ip)?;
        let left = until - time::OffsetDateTime::now_utc();
        if !left.is_positive() {
            return None;
        }
        let whole = left.whole_seconds().max(0) as u64;
        Some(whole + u64::from(left.subsec_nanoseconds() > 0))
    }

    /// Counts a strike against `ip` and bans it when it has earned that.
    /// `tenant` is who the request was authenticated for, if anyone.
    pub async fn strike(
        &self,
        store: &Store,
        ip: IpAddr,
        status: u16,
        tenant: Option<String>,
    ) -> Result<Option<Ban>, StoreError> {
        if self.exempt.contains(ip) || !store.schema_has(SCHEMA) || self.refused(ip).is_some() {
            return Ok(None);
        }
        let strikes = match store.backend() {
            Backend::Sqlite => self.count_here(ip),
            Backend::Postgres => count_shared(store, ip, self.policy.window).await?,
        };
        if strikes <= self.policy.strikes {
            return Ok(None);
        }
        let reason = format!(
            "{strikes} answers of 401, 404 or 405 within {} s (last: {status})",
            self.policy.window.as_secs()
        );
        let Some(ban) = ban(store, ip, self.policy, reason).await? else {
            return Ok(None);
        };
        if let Ok(mut active) = self.active.write()
            && let Some(until) = crate::clock::parse_rfc3339(&ban.until)
        {
            active.insert(ip, until);
            self.banned
                .store(active.len(), std::sync::atomic::Ordering::Release);
        }
        if let Ok(mut strikes) = self.strikes.lock() {
            strikes.remove(&ip);
        }
        crate::metrics::get().bans.inc();
        if let Some(scope) = tenant
            .as_deref()
            .and_then(TenantId::parse)
            .map(TenantScope::trusted)
        {
            record_in_trail(store, scope, &ban).await?;
        }
        Ok(Some(ban))
    }

    /// Strikes of `ip` in its current window, this one included.
    fn count_here(&self, ip: IpAddr) -> u32 {
        let Ok(mut strikes) = self.strikes.lock() else {
            return 0;
        };
        let now = Instant::now();
        if strikes.len() >= MAX_COUNTED {
            let window = self.policy.window;
            strikes.retain(|_, (since, _)| now.duration_since(*since) < window);
            if strikes.len() >= MAX_COUNTED {
                strikes.clear();
            }
        }
        let entry = strikes.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.policy.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1
    }
}

/// Strikes of `ip` in its current window on any node, this one included.
async fn count_shared(store: &Store, ip: IpAddr, window: Duration) -> Result<u32, StoreError> {
    let now = crate::clock::now();
    let window_start = crate::clock::in_seconds(-(window.as_secs() as i64));
    let ip = ip.to_string();
    store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                let strikes: i64 = db::query_scalar(
                    "INSERT INTO ip_strikes (ip, window_start, strikes) VALUES ($1, $2, 1) \
                     ON CONFLICT (ip) DO UPDATE SET \
                     strikes = CASE WHEN ip_strikes.window_start <= $3 THEN 1 \
                     ELSE ip_strikes.strikes + 1 END, \
                     window_start = CASE WHEN ip_strikes.window_start <= $3 \
                     THEN excluded.window_start ELSE ip_strikes.window_start END \
                     RETURNING strikes",
                )
                .bind(ip)
                .bind(now)
                .bind(window_start)
                .fetch_one(conn)
                .await?;
                Ok(u32::try_from(strikes).unwrap_or(u32::MAX))
            })
        })
        .await
}

/// Bans `ip` unless it is banned already (by another node at the same
/// moment, say): the ban lasts twice as long as the last one if that ended
/// within a day. Returns the new ban.
pub async fn ban(
    store: &Store,
    ip: IpAddr,
    policy: BanPolicy,
    reason: String,
) -> Result<Option<Ban>, StoreError> {
    let ip = ip.to_string();
    let banned = store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                let last = db::query(format!("SELECT {BAN_COLUMNS} FROM ip_bans WHERE ip = $1"))
                    .bind(&ip)
                    .fetch_optional(conn)
                    .await?
                    .map(|row| Ban::from_row(&row))
                    .transpose()?;
                if last.as_ref().is_some_and(Ban::is_active) {
                    return Ok(None);
                }
                let now = time::OffsetDateTime::now_utc();
                let recent = last.as_ref().is_some_and(|last| {
                    let ended = match last.lifted_at.as_deref() {
                        Some(lifted) => crate::clock::parse_rfc3339(lifted),
                        None => crate::clock::parse_rfc3339(&last.until),
                    };
                    ended.is_some_and(|ended| (now - ended).whole_seconds() < MEMORY)
                });
                let level = match &last {
                    Some(last) if recent => u32::try_from(last.level).unwrap_or(1) + 1,
                    _ => 1,
                };
                let until = now + policy.length(level);
                let ban = Ban {
                    ip: ip.clone(),
                    banned_at: crate::clock::format(now),
                    until: crate::clock::format(until),
                    level: i64::from(level),
                    reason,
                    lifted_at: None,
                    lifted_by: None,
                };
                // The guard holds against a node banning at the same time:
                // its row, once committed, is active, and this changes nothing.
                let changed = db::query(
                    "INSERT INTO ip_bans (ip, banned_at, until, level, reason) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (ip) DO UPDATE SET banned_at = excluded.banned_at, \
                     until = excluded.until, level = excluded.level, reason = excluded.reason, \
                     lifted_at = NULL, lifted_by = NULL \
                     WHERE ip_bans.until <= $2 OR ip_bans.lifted_at IS NOT NULL",
                )
                .bind(&ban.ip)
                .bind(&ban.banned_at)
                .bind(&ban.until)
                .bind(ban.level)
                .bind(&ban.reason)
                .execute(conn)
                .await?
                .rows_affected();
                if changed == 0 {
                    return Ok(None);
                }
                db::query("DELETE FROM ip_strikes WHERE ip = $1")
                    .bind(&ban.ip)
                    .execute(conn)
                    .await?;
                conn.announce(CHANNEL, &ban.ip).await?;
                Ok(Some(ban))
            })
        })
        .await?;
    if let Some(ban) = &banned {
        tracing::warn!(
            target: "security",
            ip = %ban.ip,
            until = %ban.until,
            level = ban.level,
            reason = %ban.reason,
            "client address banned"
        );
    }
    Ok(banned)
}

/// Ends `ip`'s ban now; `false` when it had none in force.
pub async fn lift(store: &Store, ip: IpAddr, by: &str) -> Result<bool, StoreError> {
    let ip = ip.to_string();
    let by = by.to_owned();
    let now = crate::clock::now();
    let lifted = {
        let (ip, by) = (ip.clone(), by.clone());
        store
            .append_internal(None, move |conn| {
                Box::pin(async move {
                    let changed = db::query(
                        "UPDATE ip_bans SET lifted_at = $2, lifted_by = $3 \
                         WHERE ip = $1 AND lifted_at IS NULL AND until > $2",
                    )
                    .bind(&ip)
                    .bind(now)
                    .bind(by)
                    .execute(conn)
                    .await?
                    .rows_affected();
                    if changed > 0 {
                        conn.announce(CHANNEL, &ip).await?;
                    }
                    Ok(changed > 0)
                })
            })
            .await?
    };
    if lifted {
        tracing::warn!(target: "security", %ip, by = %by, "client address ban lifted");
    }
    Ok(lifted)
}

/// Every ban on record, newest first (active and past).
pub async fn list(store: &Store) -> Result<Vec<Ban>, StoreError> {
    if !store.schema_has(SCHEMA) {
        return Ok(Vec::new());
    }
    select(store, "ORDER BY banned_at DESC, ip", None).await
}

async fn active(store: &Store) -> Result<Vec<Ban>, StoreError> {
    let now = crate::clock::now();
    select(store, "WHERE lifted_at IS NULL AND until > $1", Some(now)).await
}

/// Bans as `rest` (a condition or an order, on `bind` as `$1`) picks them.
async fn select(store: &Store, rest: &str, bind: Option<String>) -> Result<Vec<Ban>, StoreError> {
    let mut tx = store.read_unscoped().await?;
    let mut query = db::query(format!("SELECT {BAN_COLUMNS} FROM ip_bans {rest}"));
    if let Some(bind) = bind {
        query = query.bind(bind);
    }
    let rows = query.fetch_all(tx.conn()).await?;
    rows.iter()
        .map(Ban::from_row)
        .collect::<Result<_, _>>()
        .map_err(StoreError::from)
}

/// Records a ban in the trail of the tenant it concerns (outcome `denied`).
async fn record_in_trail(store: &Store, scope: TenantScope, ban: &Ban) -> Result<(), StoreError> {
    let permit = Permit::system(scope, "bans");
    let meta = RequestMeta {
        ip: Some(ban.ip.clone()),
        ..RequestMeta::default()
    };
    let ip = ban.ip.clone();
    store
        .write(&permit, &meta, "security.ip_banned", move |tx| {
            Box::pin(async move {
                tx.set_outcome(Outcome::Denied);
                tx.set_target("ip", ip);
                Ok::<_, StoreError>(())
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ban_within_a_day_doubles_up_to_a_day() {
        let policy = BanPolicy {
            strikes: 10,
            window: Duration::from_secs(60),
            first: Duration::from_secs(600),
        };
        assert_eq!(policy.length(1), Duration::from_secs(600));
        assert_eq!(policy.length(2), Duration::from_secs(1200));
        assert_eq!(policy.length(4), Duration::from_secs(4800));
        assert_eq!(policy.length(9), LONGEST);
        assert_eq!(policy.length(400), LONGEST);
    }

    #[test]
    fn only_failed_authentication_and_misses_are_strikes() {
        assert!(is_strike(401) && is_strike(404) && is_strike(405));
        assert!(!is_strike(200) && !is_strike(403) && !is_strike(429) && !is_strike(500));
    }
}

/// `/api/v1/ops/bans`: a security officer lists, records and lifts bans
/// (ACC-3, NET-3), as `strongroom bans` does at the console.
pub fn router() -> super::api::Api {
    use axum::routing::{delete, get};
    use serde_json::json;

    use super::api::{Api, Op};
    use crate::operators::OperatorRole;
    Api::new()
        .route(
            Op::new("GET", "/api/v1/ops/bans", "Client addresses banned, newest first")
                .tag("operators")
                .operator(&[OperatorRole::SecurityOfficer, OperatorRole::Operator]),
            get(list_bans),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/ops/bans",
                "Ban a client address now (as a flood would: the ban grows if it comes back within a day)",
            )
            .tag("operators")
            .operator(&[OperatorRole::SecurityOfficer])
            .errors(&[409])
            .body(json!({"type": "object", "required": ["ip", "reason"], "additionalProperties": false,
                         "properties": {"ip": {"type": "string", "maxLength": 45,
                                               "pattern": "^[0-9a-fA-F:.]+$"},
                                        "reason": {"type": "string", "minLength": 3, "maxLength": 500}}}))
            .ok(201),
            axum::routing::post(add_ban),
        )
        .route(
            Op::new("DELETE", "/api/v1/ops/bans/{ip}", "Lift a ban now")
                .tag("operators")
                .operator(&[OperatorRole::SecurityOfficer])
                .ok(204),
            delete(lift_ban),
        )
}

async fn list_bans(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    _: super::extract::Operator,
) -> Result<axum::Json<serde_json::Value>, super::ApiError> {
    let bans = list(&state.store).await?;
    Ok(axum::Json(serde_json::json!({"items": bans})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBan {
    ip: String,
    reason: String,
}

async fn add_ban(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    super::extract::Operator(officer): super::extract::Operator,
    super::ApiJson(body): super::ApiJson<NewBan>,
) -> Result<axum::response::Response, super::ApiError> {
    use axum::response::IntoResponse;
    let ip: IpAddr = body.ip.parse().map_err(|_| {
        super::ApiError::validation("ip is an IPv4 or IPv6 address").with_field("ip")
    })?;
    let reason = format!(
        "{} (security officer {})",
        body.reason.trim(),
        officer.email
    );
    let banned = ban(&state.store, ip, state.bans.policy(), reason).await?;
    state.bans.refresh(&state.store).await?;
    tracing::warn!(target: "security", %ip, officer = %officer.email, "an address was banned by a security officer");
    match banned {
        Some(ban) => Ok((axum::http::StatusCode::CREATED, axum::Json(ban)).into_response()),
        None => Err(super::ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "banned-already",
            "the address is banned already",
        )),
    }
}

async fn lift_ban(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    super::extract::Operator(officer): super::extract::Operator,
    super::ApiPath(ip): super::ApiPath<String>,
) -> Result<axum::http::StatusCode, super::ApiError> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| super::ApiError::not_found("no ban of that address"))?;
    let by = format!("security officer {}", officer.email);
    if lift(&state.store, ip, &by).await? {
        state.bans.refresh(&state.store).await?;
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        Err(super::ApiError::not_found("the address is not banned"))
    }
}
