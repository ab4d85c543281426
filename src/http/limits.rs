//! Rate limits on the doors password guessing goes through (NET-3, first
//! cut): password login and invitation acceptance, per client address and
//! per account, as token buckets in this process's memory. Over a limit
//! the answer is `429` with `Retry-After`, before any password is hashed.
//! Only failed guesses count: an attempt that succeeds, or is refused for
//! something else (a weak new password), gives its token back.
//! The defaults never bother a person (5 attempts a minute for one
//! account, 30 a minute from one address, with bursts of as many), and
//! addresses in `rate_limit_exempt` (a load generator) are never limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::TrustedProxies;

/// Buckets kept at most; beyond it the full ones are forgotten first.
const MAX_BUCKETS: usize = 100_000;

/// A rate: `burst` at once, refilled at `per_minute`.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_minute: u32,
}

impl Rate {
    fn refill_per_second(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn burst(self) -> f64 {
        f64::from(self.per_minute.max(1))
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limits of one process.
pub struct RateLimits {
    per_ip: Rate,
    per_account: Rate,
    exempt: TrustedProxies,
    buckets: Mutex<HashMap<(&'static str, String), Bucket>>,
}

impl RateLimits {
    pub fn new(per_ip: Rate, per_account: Rate, exempt: TrustedProxies) -> RateLimits {
        RateLimits {
            per_ip,
            per_account,
            exempt,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is
    /// there.
    fn take(&self, kind: &'static str, key: String, rate: Rate) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS {
            // Forget the buckets that have refilled: they hold nothing.
            buckets.retain(|(kind, _), b| {
                let rate = if *kind == "ip" {
                    self.per_ip
                } else {
                    self.per_account
                };
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate.refill_per_second()
                    < rate.burst()
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry((kind, key)).or_insert(Bucket {
            tokens: rate.burst(),
            at: now,
        });
        let refilled = now.duration_since(bucket.at).as_secs_f64() * rate.refill_per_second();
        bucket.tokens = (bucket.tokens + refilled).min(rate.burst());
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rate.refill_per_second();
            Err(Duration::from_secs_f64(wait.max(0.0)))
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

    /// One password attempt for `account` (tenant and e-mail, or an
    /// invitation) from `ip`.
    pub fn attempt(&self, ip: Option<&str>, account: &str) -> Result<(), TooMany> {
        let Some(ip) = self.limited(ip) else {
            return Ok(());
        };
        let by_ip = match ip {
            Some(ip) => self.take("ip", ip.to_string(), self.per_ip),
            None => Ok(()),
        };
        let by_account = self.take("account", account.to_lowercase(), self.per_account);
        match (by_ip, by_account) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(wait), Ok(())) | (Ok(()), Err(wait)) => Err(too_many(wait)),
            (Err(a), Err(b)) => Err(too_many(a.max(b))),
        }
    }
}

impl RateLimits {
    /// Gives back what [`RateLimits::attempt`] took, for an attempt that
    /// guessed nothing: it succeeded, or was refused for another reason (a
    /// weak new password). Only failed guesses use the limit up, and as
    /// the token was taken first, concurrent guesses cannot slip past it.
    pub fn refund(&self, ip: Option<&str>, account: &str) {
        let Some(ip) = self.limited(ip) else {
            return;
        };
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        let mut give = |kind: &'static str, key: String, rate: Rate| {
            if let Some(bucket) = buckets.get_mut(&(kind, key)) {
                bucket.tokens = (bucket.tokens + 1.0).min(rate.burst());
            }
        };
        if let Some(ip) = ip {
            give("ip", ip.to_string(), self.per_ip);
        }
        give("account", account.to_lowercase(), self.per_account);
    }
}

/// Over a limit: how long until the next attempt may come (`429`).
#[derive(Debug)]
pub struct TooMany {
    pub retry_after_seconds: u64,
}

fn too_many(wait: Duration) -> TooMany {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    tracing::warn!(target: "security", retry_after = seconds, "password attempts over the limit");
    TooMany {
        retry_after_seconds: seconds.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_come_back() {
        let limits = RateLimits::new(
            Rate { per_minute: 30 },
            Rate { per_minute: 3 },
            TrustedProxies::default(),
        );
        for _ in 0..3 {
            assert!(limits.attempt(Some("192.0.2.1"), "acme/a@x").is_ok());
        }
        let refused = limits.attempt(Some("192.0.2.1"), "acme/a@x").unwrap_err();
        assert!((1..=60).contains(&refused.retry_after_seconds));
        // Another account from the same address is still fine.
        assert!(limits.attempt(Some("192.0.2.1"), "acme/b@x").is_ok());
        // The same account is limited from anywhere, whatever its case.
        assert!(limits.attempt(Some("192.0.2.9"), "ACME/A@X").is_err());
    }

    #[test]
    fn attempts_that_guessed_nothing_give_their_token_back() {
        let limits = RateLimits::new(
            Rate { per_minute: 30 },
            Rate { per_minute: 2 },
            TrustedProxies::default(),
        );
        for _ in 0..10 {
            limits.attempt(Some("192.0.2.1"), "acme/a@x").unwrap();
            limits.refund(Some("192.0.2.1"), "acme/a@x");
        }
        assert!(limits.attempt(Some("192.0.2.1"), "acme/a@x").is_ok());
        assert!(limits.attempt(Some("192.0.2.1"), "acme/a@x").is_ok());
        assert!(limits.attempt(Some("192.0.2.1"), "acme/a@x").is_err());
    }

    #[test]
    fn exempt_addresses_are_never_limited() {
        let exempt = TrustedProxies::parse(&["127.0.0.1".into()]).unwrap();
        let limits = RateLimits::new(Rate { per_minute: 1 }, Rate { per_minute: 1 }, exempt);
        for _ in 0..10 {
            assert!(limits.attempt(Some("127.0.0.1"), "acme/a@x").is_ok());
        }
        assert!(limits.attempt(Some("192.0.2.1"), "acme/a@x").is_ok());
        assert!(limits.attempt(Some("192.0.2.1"), "acme/a@x").is_err());
    }
}
