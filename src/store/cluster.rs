//! Several app servers on one PostgreSQL (DESIGN.md "Scale-out").
//!
//! * **Leases.** Every scheduled job runs on one node at a time: before
//!   each run a node takes (or confirms) a session-level advisory lock
//!   named after the job on a connection of its own, and holds it for as
//!   long as it lives. A node that dies loses its session, so its locks go
//!   at once and the next node to tick — within one interval — takes the
//!   job on. On SQLite there is one server per database file and every job
//!   is its own.
//! * **Notifications.** What a node caches that another may change (the
//!   unwrapped data keys) is announced with `NOTIFY` in the transaction that
//!   changes it, and every node listening forgets it when that commits. A
//!   node that loses its listening connection forgets everything of the
//!   kind, since it may have missed an announcement.
//! * **Watched changes.** A cache of what the write path changes (who a
//!   session is) watches entity kinds ([`super::Store::watch`]): when a
//!   job that updated or deleted an entity of a watched kind commits, the
//!   node's own watchers hear it before the job's caller does, and every
//!   other node hears it through [`CHANGES`] when the transaction commits.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use super::db;

/// Who this process is in `job_heartbeats` and the logs: host, process id
/// and a random suffix, so a restarted process is a new node.
pub(super) fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..6])
}

/// The advisory-lock key of a job: FNV-1a over a namespaced name, so that
/// it is stable across builds and apart from the migration lock.
fn lock_key(job: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"strongroom/job/".iter().chain(job.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // The same 64 bits, read as PostgreSQL's signed bigint.
    hash as i64
}

pub(super) enum Leases {
    /// One server per database: every job is this node's.
    Local,
    Postgres(Box<PgLeases>),
}

pub(super) struct PgLeases {
    options: PgConnectOptions,
    /// The session the locks live in, and the jobs it holds.
    session: tokio::sync::Mutex<(Option<PgConnection>, HashSet<String>)>,
}

impl Leases {
    pub(super) fn postgres(options: PgConnectOptions) -> Leases {
        Leases::Postgres(Box::new(PgLeases {
            options,
            session: tokio::sync::Mutex::new((None, HashSet::new())),
        }))
    }

    /// Whether this node may run `job` now. A database error counts as
    /// "no": a job skipped once is better than a job run twice.
    pub(super) async fn hold(&self, job: &str) -> bool {
        let Leases::Postgres(pg) = self else {
            return true;
        };
        let mut session = pg.session.lock().await;
        let (conn, held) = &mut *session;
        match pg.try_hold(conn, held, job).await {
            Ok(holding) => holding,
            Err(e) => {
                tracing::warn!(job, error = %e, "lease session lost; its jobs are free for other nodes");
                // The locks went with the session (or will, when the server
                // notices); start again on the next tick.
                *conn = None;
                held.clear();
                false
            }
        }
    }
}

impl PgLeases {
    /// How to reach the database, as the connecting user.
    pub(super) fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    async fn try_hold(
        &self,
        conn: &mut Option<PgConnection>,
        held: &mut HashSet<String>,
        job: &str,
    ) -> Result<bool, db::Error> {
        if conn.is_none() {
            held.clear();
            *conn = Some(PgConnection::connect_with(&self.options).await?);
        }
        let Some(session) = conn.as_mut() else {
            return Ok(false);
        };
        if held.contains(job) {
            // Still ours as long as the session is alive.
            session.ping().await?;
            return Ok(true);
        }
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(job))
            .fetch_one(&mut *session)
            .await?;
        if got {
            tracing::info!(job, "this node now runs the job");
            held.insert(job.to_owned());
        }
        Ok(got)
    }
}

/// The channel on which nodes announce watched changes, as `kind:tenant`.
pub(super) const CHANGES: &str = "strongroom_changes";

/// Caches that forget what the write path changed, by entity kind.
#[derive(Clone, Default)]
pub(super) struct Watchers(Arc<std::sync::RwLock<Vec<Watcher>>>);

struct Watcher {
    kinds: &'static [&'static str],
    on_change: OnChange,
}

impl Watchers {
    pub(super) fn add(&self, kinds: &'static [&'static str], on_change: OnChange) {
        if let Ok(mut all) = self.0.write() {
            all.push(Watcher { kinds, on_change });
        }
    }

    /// Whether any cache watches `kind`.
    pub(super) fn watches(&self, kind: &str) -> bool {
        self.0
            .read()
            .is_ok_and(|all| all.iter().any(|w| w.kinds.contains(&kind)))
    }

    /// Tells the watchers of `kind` (every watcher when `None`) that
    /// `tenant`'s entities changed (`None`: maybe any tenant's).
    pub(super) fn changed(&self, kind: Option<&str>, tenant: Option<&str>) {
        let Ok(all) = self.0.read() else {
            return;
        };
        for watcher in all.iter() {
            if kind.is_none_or(|k| watcher.kinds.contains(&k)) {
                (watcher.on_change)(tenant);
            }
        }
    }

    /// An announcement on [`CHANGES`] (`None`: some may have been missed).
    pub(super) fn announced(&self, payload: Option<&str>) {
        match payload.and_then(|p| p.split_once(':')) {
            Some((kind, tenant)) => self.changed(Some(kind), Some(tenant)),
            None => self.changed(None, None),
        }
    }
}

/// What a listener calls with each announcement (`None`: some may be lost).
pub(super) type OnChange = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// Calls `on_change` with each payload announced on `channel`, and with
/// `None` whenever announcements may have been missed. Returns at once; the
/// listening runs until the process ends.
pub(super) async fn listen(
    options: &PgConnectOptions,
    channel: &'static str,
    on_change: OnChange,
) -> Result<(), db::Error> {
    // A connection of its own, outside the store's pool: closing the store
    // waits for every pooled connection, and this one is never given back.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(channel).await?;
    tokio::spawn(async move {
        loop {
            // `try_recv` answers None when the connection was lost and
            // re-established: what was announced meanwhile is unknown.
            match listener.try_recv().await {
                Ok(Some(note)) => on_change(Some(note.payload())),
                Ok(None) => {
                    tracing::warn!(
                        channel,
                        "notifications may have been missed; forgetting all"
                    );
                    on_change(None);
                }
                Err(e) => {
                    tracing::warn!(channel, error = %e, "listening failed; retrying");
                    on_change(None);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct_per_job() {
        assert_eq!(lock_key("audit.checkpoint"), lock_key("audit.checkpoint"));
        assert_ne!(lock_key("audit.checkpoint"), lock_key("audit.retention"));
        assert_ne!(lock_key("files.sweep"), 0x5354_524f_4e47);
    }
}
