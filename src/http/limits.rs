//! Rate limits (NET-3), as token buckets in this process's memory. Over a
//! limit the answer is `429` with `Retry-After`.
//!
//! * **Password attempts** (login, invitation acceptance), per client
//!   address and per account, before any password is hashed. Only failed
//!   guesses count: an attempt that succeeds, or is refused for something
//!   else (a weak new password), gives its token back. Defaults: 5 a minute
//!   for one account, 30 a minute from one address, in bursts of as many.
//!   On PostgreSQL these buckets are rows of `rate_buckets`, shared by every
//!   app server (locked while taken, so concurrent guesses on several nodes
//!   cannot slip past), keyed by a hash so that no e-mail address is kept.
//! * **Authenticated requests**, per user, per client address and per
//!   tenant (defaults 50, 300 and 1,000 a second, a second's worth at
//!   once): a person clicking, or a whole office behind one NAT address,
//!   never meets them; a runaway script does. They cost no database round
//!   trip. With several app servers each node keeps its own buckets, so a
//!   client spreading requests over N nodes gets N times the rate; the
//!   bans (`http::bans`) are what the nodes share.
//!
//! Addresses in `rate_limit_exempt` (a load generator) are never limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::TrustedProxies;
use crate::store::{Backend, Store, StoreError, db};

/// Buckets kept at most; beyond it the full ones are forgotten first.
const MAX_BUCKETS: usize = 100_000;

/// A rate: up to `burst` at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    /// `n` a minute, in bursts of `n`.
    pub fn per_minute(n: u32) -> Rate {
        Rate {
            per_second: f64::from(n.max(1)) / 60.0,
            burst: f64::from(n.max(1)),
        }
    }

    /// `n` a second, in bursts of `n`.
    pub fn per_second(n: u32) -> Rate {
        Rate {
            per_second: f64::from(n.max(1)),
            burst: f64::from(n.max(1)),
        }
    }

    /// `tokens` after `seconds` of refilling.
    fn refilled(self, tokens: f64, seconds: f64) -> f64 {
        (tokens + seconds.max(0.0) * self.per_second).min(self.burst)
    }

    /// How long until `tokens` reach one (zero: now).
    fn wait(self, tokens: f64) -> Duration {
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(((1.0 - tokens) / self.per_second).max(0.0))
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    rate: Rate,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let seconds = now.duration_since(self.at).as_secs_f64();
        self.tokens = self.rate.refilled(self.tokens, seconds);
        self.at = now;
    }
}

/// Token buckets by kind and key, held under a 64-bit hash of the two so
/// that a lookup allocates nothing (two keys sharing a hash would share a
/// bucket: with 100,000 buckets, odds of about one in 10^9).
#[derive(Default)]
struct Buckets {
    map: Mutex<HashMap<u64, Bucket>>,
    hasher: std::hash::RandomState,
}

impl Buckets {
    fn slot(&self, kind: &str, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((kind, key))
    }
}

impl Buckets {
    /// Takes one token from each named bucket when every one has one, or
    /// says how long until they all do (and takes none).
    fn take_each(&self, wanted: &[(&'static str, &str, Rate)]) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut buckets) = self.map.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS {
            // Forget the buckets that have refilled: they hold nothing.
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < b.rate.burst
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let mut wait = Duration::ZERO;
        for &(kind, key, rate) in wanted {
            let bucket = buckets.entry(self.slot(kind, key)).or_insert(Bucket {
                tokens: rate.burst,
                at: now,
                rate,
            });
            bucket.rate = rate;
            bucket.refill(now);
            wait = wait.max(bucket.rate.wait(bucket.tokens));
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for &(kind, key, _) in wanted {
            if let Some(bucket) = buckets.get_mut(&self.slot(kind, key)) {
                bucket.tokens -= 1.0;
            }
        }
        Ok(())
    }

    /// Gives one token back to each named bucket.
    fn give_back(&self, given: &[(&'static str, &str)]) {
        let Ok(mut buckets) = self.map.lock() else {
            return;
        };
        for &(kind, key) in given {
            if let Some(bucket) = buckets.get_mut(&self.slot(kind, key)) {
                bucket.tokens = (bucket.tokens + 1.0).min(bucket.rate.burst);
            }
        }
    }
}

/// What each limit allows.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub login_per_ip: Rate,
    pub login_per_account: Rate,
    pub requests_per_user: Rate,
    pub requests_per_ip: Rate,
    pub requests_per_tenant: Rate,
}

/// The limits of one process.
pub struct RateLimits {
    rates: Rates,
    exempt: TrustedProxies,
    buckets: Buckets,
    /// Where password-attempt buckets are shared (PostgreSQL).
    shared: Option<Store>,
    /// Attempts since full buckets were last cleared from the table.
    attempts: std::sync::atomic::AtomicU64,
}

/// The schema migration that brought `rate_buckets`.
const SHARED_SCHEMA: i64 = 8;

/// Every this many shared attempts, buckets idle for an hour (full again
/// at any rate the settings allow) are deleted.
const SWEEP_EVERY: u64 = 500;

impl RateLimits {
    /// Limits in this process's memory only.
    pub fn new(rates: Rates, exempt: TrustedProxies) -> RateLimits {
        RateLimits {
            rates,
            exempt,
            buckets: Buckets::default(),
            shared: None,
            attempts: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Limits whose password-attempt buckets live in `store` when it is
    /// PostgreSQL (several app servers), in memory on SQLite.
    pub fn for_store(rates: Rates, exempt: TrustedProxies, store: &Store) -> RateLimits {
        let shared = (store.backend() == Backend::Postgres && store.schema_has(SHARED_SCHEMA))
            .then(|| store.clone());
        RateLimits {
            shared,
            ..RateLimits::new(rates, exempt)
        }
    }

    /// The client address an attempt counts against: `Some(None)` when it
    /// is not known, `None` when it is exempt from every limit.
    fn limited(&self, ip: Option<&str>) -> Option<Option<IpAddr>> {
        let ip: Option<IpAddr> = ip.and_then(|ip| ip.parse().ok());
        match ip {
            Some(ip) if self.exempt.contains(ip) => None,
            ip => Some(ip),
        }
    }

    /// The buckets a password attempt for `account` from `ip` counts
    /// against (kind, key, rate); `None` when `ip` is exempt.
    fn login_buckets(
        &self,
        ip: Option<&str>,
        account: &str,
    ) -> Option<Vec<(&'static str, String, Rate)>> {
        let ip = self.limited(ip)?;
        let mut buckets = vec![(
            "login-account",
            account.to_lowercase(),
            self.rates.login_per_account,
        )];
        if let Some(ip) = ip {
            buckets.push(("login-ip", ip.to_string(), self.rates.login_per_ip));
        }
        Some(buckets)
    }

    /// The shared buckets' rows for `account` from `ip`, by hashed key.
    fn shared_buckets(&self, ip: Option<&str>, account: &str) -> Option<Vec<(String, Rate)>> {
        Some(
            self.login_buckets(ip, account)?
                .into_iter()
                .map(|(kind, key, rate)| (bucket_key(kind, &key), rate))
                .collect(),
        )
    }

    /// One password attempt for `account` (tenant and e-mail, or an
    /// invitation) from `ip`: in the shared buckets when there are some.
    pub async fn attempt(&self, ip: Option<&str>, account: &str) -> Result<(), AttemptError> {
        let Some(store) = &self.shared else {
            return Ok(self.attempt_here(ip, account)?);
        };
        let Some(wanted) = self.shared_buckets(ip, account) else {
            return Ok(());
        };
        let sweep = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY);
        match take_shared(store, wanted, sweep).await? {
            Ok(()) => Ok(()),
            Err(wait) => Err(too_many(wait, "password attempts").into()),
        }
    }

    /// [`RateLimits::refund`], in the shared buckets when there are some.
    pub async fn give_back(&self, ip: Option<&str>, account: &str) {
        let Some(store) = &self.shared else {
            self.refund(ip, account);
            return;
        };
        let Some(given) = self.shared_buckets(ip, account) else {
            return;
        };
        let given = store
            .append_internal(None, move |conn| {
                Box::pin(async move {
                    for (key, rate) in &given {
                        db::query(
                            "UPDATE rate_buckets SET tokens = LEAST(tokens + 1, $2) WHERE key = $1",
                        )
                        .bind(key.as_str())
                        .bind(rate.burst)
                        .execute(conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .await;
        if let Err(e) = given {
            tracing::warn!(error = %e, "could not give a password-attempt token back");
        }
    }

    /// One password attempt in this process's buckets.
    pub fn attempt_here(&self, ip: Option<&str>, account: &str) -> Result<(), TooMany> {
        let Some(buckets) = self.login_buckets(ip, account) else {
            return Ok(());
        };
        let wanted: Vec<_> = buckets
            .iter()
            .map(|(kind, key, rate)| (*kind, key.as_str(), *rate))
            .collect();
        self.buckets
            .take_each(&wanted)
            .map_err(|wait| too_many(wait, "password attempts"))
    }

    /// Gives back what [`RateLimits::attempt`] took, for an attempt that
    /// guessed nothing: it succeeded, or was refused for another reason (a
    /// weak new password). Only failed guesses use the limit up, and as
    /// the token was taken first, concurrent guesses cannot slip past it.
    pub fn refund(&self, ip: Option<&str>, account: &str) {
        let Some(buckets) = self.login_buckets(ip, account) else {
            return;
        };
        let given: Vec<_> = buckets
            .iter()
            .map(|(kind, key, _)| (*kind, key.as_str()))
            .collect();
        self.buckets.give_back(&given);
    }

    /// One authenticated request by `user` of `tenant` from `ip`.
    pub fn request(&self, ip: Option<&str>, tenant: &str, user: &str) -> Result<(), TooMany> {
        let Some(parsed) = self.limited(ip) else {
            return Ok(());
        };
        // No allocation on this path: every authenticated request takes it.
        let wanted = [
            ("user", user, self.rates.requests_per_user),
            ("tenant", tenant, self.rates.requests_per_tenant),
            ("ip", ip.unwrap_or(""), self.rates.requests_per_ip),
        ];
        let counted = if parsed.is_some() { 3 } else { 2 };
        self.buckets
            .take_each(&wanted[..counted])
            .map_err(|wait| too_many(wait, "requests"))
    }
}

/// A shared bucket's key: what it counts, hashed (no e-mail is stored).
fn bucket_key(kind: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{kind}\n{key}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Takes one token from each shared bucket when every one has one, or says
/// how long until they all do (and takes none). The rows are locked for
/// the writer's transaction, so two nodes cannot both take the last token.
async fn take_shared(
    store: &Store,
    wanted: Vec<(String, Rate)>,
    sweep: bool,
) -> Result<Result<(), Duration>, StoreError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
    store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                if sweep {
                    db::query("DELETE FROM rate_buckets WHERE at < $1")
                        .bind(now - 3600.0)
                        .execute(conn)
                        .await?;
                }
                let mut refilled = Vec::with_capacity(wanted.len());
                let mut wait = Duration::ZERO;
                for (key, rate) in &wanted {
                    db::query(
                        "INSERT INTO rate_buckets (key, tokens, at) VALUES ($1, $2, $3) \
                         ON CONFLICT (key) DO NOTHING",
                    )
                    .bind(key.as_str())
                    .bind(rate.burst)
                    .bind(now)
                    .execute(conn)
                    .await?;
                    let row =
                        db::query("SELECT tokens, at FROM rate_buckets WHERE key = $1 FOR UPDATE")
                            .bind(key.as_str())
                            .fetch_one(conn)
                            .await?;
                    let (tokens, at): (f64, f64) = (row.try_get(0)?, row.try_get(1)?);
                    let tokens = rate.refilled(tokens, now - at);
                    wait = wait.max(rate.wait(tokens));
                    refilled.push(tokens);
                }
                let take = if wait == Duration::ZERO { 1.0 } else { 0.0 };
                for ((key, _), tokens) in wanted.iter().zip(refilled) {
                    db::query("UPDATE rate_buckets SET tokens = $2, at = $3 WHERE key = $1")
                        .bind(key.as_str())
                        .bind(tokens - take)
                        .bind(now)
                        .execute(conn)
                        .await?;
                }
                Ok(if wait == Duration::ZERO {
                    Ok(())
                } else {
                    Err(wait)
                })
            })
        })
        .await
}

/// Why a password attempt may not go ahead.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("over the limit")]
    TooMany(TooMany),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<TooMany> for AttemptError {
    fn from(e: TooMany) -> Self {
        AttemptError::TooMany(e)
    }
}

/// Over a limit: how long until the next attempt may come (`429`).
#[derive(Debug)]
pub struct TooMany {
    pub retry_after_seconds: u64,
    pub what: &'static str,
}

fn too_many(wait: Duration, what: &'static str) -> TooMany {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    tracing::warn!(target: "security", retry_after = seconds, "{what} over the limit");
    crate::metrics::get().rate_limited(what);
    TooMany {
        retry_after_seconds: seconds.max(1),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(login_per_ip: u32, login_per_account: u32) -> Rates {
        Rates {
            login_per_ip: Rate::per_minute(login_per_ip),
            login_per_account: Rate::per_minute(login_per_account),
            requests_per_user: Rate::per_second(3),
            requests_per_ip: Rate::per_second(5),
            requests_per_tenant: Rate::per_second(100),
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_come_back() {
        let limits = RateLimits::new(rates(30, 3), TrustedProxies::default());
        for _ in 0..3 {
            assert!(limits.attempt_here(Some("192.0.2.1"), "acme/a@x").is_ok());
        }
        let refused = limits
            .attempt_here(Some("192.0.2.1"), "acme/a@x")
            .unwrap_err();
        assert!((1..=60).contains(&refused.retry_after_seconds));
        // Another account from the same address is still fine.
        assert!(limits.attempt_here(Some("192.0.2.1"), "acme/b@x").is_ok());
        // The same account is limited from anywhere, whatever its case.
        assert!(limits.attempt_here(Some("192.0.2.9"), "ACME/A@X").is_err());
    }

    #[test]
    fn attempts_that_guessed_nothing_give_their_token_back() {
        let limits = RateLimits::new(rates(30, 2), TrustedProxies::default());
        for _ in 0..10 {
            limits.attempt_here(Some("192.0.2.1"), "acme/a@x").unwrap();
            limits.refund(Some("192.0.2.1"), "acme/a@x");
        }
        assert!(limits.attempt_here(Some("192.0.2.1"), "acme/a@x").is_ok());
        assert!(limits.attempt_here(Some("192.0.2.1"), "acme/a@x").is_ok());
        assert!(limits.attempt_here(Some("192.0.2.1"), "acme/a@x").is_err());
    }

    #[test]
    fn exempt_addresses_are_never_limited() {
        let exempt = TrustedProxies::parse(&["127.0.0.1".into()]).unwrap();
        let limits = RateLimits::new(rates(1, 1), exempt);
        for _ in 0..10 {
            assert!(limits.attempt_here(Some("127.0.0.1"), "acme/a@x").is_ok());
            assert!(limits.request(Some("127.0.0.1"), "t", "u").is_ok());
        }
        assert!(limits.attempt_here(Some("192.0.2.1"), "acme/a@x").is_ok());
        assert!(limits.attempt_here(Some("192.0.2.1"), "acme/a@x").is_err());
    }

    #[test]
    fn requests_are_limited_per_user_and_per_address_and_a_refusal_takes_nothing() {
        let limits = RateLimits::new(rates(30, 5), TrustedProxies::default());
        for _ in 0..3 {
            limits.request(Some("192.0.2.1"), "t", "alice").unwrap();
        }
        // Alice is over her 3 a second; the refusal used no address token.
        assert!(limits.request(Some("192.0.2.1"), "t", "alice").is_err());
        limits.request(Some("192.0.2.1"), "t", "bob").unwrap();
        limits.request(Some("192.0.2.1"), "t", "bob").unwrap();
        // The address has had its 5 now, whoever asks.
        let refused = limits.request(Some("192.0.2.1"), "t", "carol").unwrap_err();
        assert_eq!(refused.retry_after_seconds, 1);
        assert!(limits.request(Some("192.0.2.2"), "t", "carol").is_ok());
    }
}
