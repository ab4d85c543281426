//! Scheduled jobs and their heartbeats (OPS-1, first cut): every job records
//! when it last ran, on which node, how often, and whether it succeeded, so
//! a stalled job is visible. With several app servers on one PostgreSQL a
//! job runs on the one node holding its lease (`Store::hold_lease`).
//! Each node knows the jobs it schedules and their intervals ([`Schedule`]);
//! `/readyz` fails naming any that has not run for twice its interval.
//! Integrity at start (OPS-3) is `install`; running under a supervisor
//! (BAK-7) is `supervise`.

pub mod install;
pub mod supervise;

use std::future::Future;
use std::time::Duration;

use crate::store::db;
use crate::store::{Store, StoreError};

/// The jobs this process schedules, with their intervals.
#[derive(Default)]
pub struct Schedule(std::sync::Mutex<Vec<Scheduled>>);

struct Scheduled {
    job: &'static str,
    every: Duration,
    since: std::time::Instant,
}

impl Schedule {
    fn add(&self, job: &'static str, every: Duration) {
        if let Ok(mut jobs) = self.0.lock() {
            jobs.push(Scheduled {
                job,
                every,
                since: std::time::Instant::now(),
            });
        }
    }

    /// The jobs overdue now: scheduled for longer than twice their
    /// interval, and not run (on any node) within twice their interval.
    pub async fn overdue(&self, store: &Store) -> Result<Vec<&'static str>, StoreError> {
        let due: Vec<(&'static str, Duration)> = match self.0.lock() {
            Ok(jobs) => jobs
                .iter()
                .filter(|j| j.since.elapsed() > j.every * 2)
                .map(|j| (j.job, j.every))
                .collect(),
            Err(_) => Vec::new(),
        };
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let runs = last_runs(store).await?;
        let now = time::OffsetDateTime::now_utc();
        Ok(due
            .into_iter()
            .filter(|(job, every)| {
                let last = runs
                    .iter()
                    .find(|r| r.job == *job)
                    .and_then(|r| crate::clock::parse_rfc3339(&r.last_run_at));
                last.is_none_or(|at| (now - at).unsigned_abs() > *every * 2)
            })
            .map(|(job, _)| job)
            .collect())
    }
}

/// One job's last heartbeat, as stored.
#[derive(Debug, serde::Serialize)]
pub struct JobRun {
    pub job: String,
    pub last_run_at: String,
    pub ok: bool,
    pub node: Option<String>,
    pub runs: i64,
    pub detail: Option<String>,
}

/// Every job's last heartbeat, by name.
pub async fn last_runs(store: &Store) -> Result<Vec<JobRun>, StoreError> {
    let mut tx = store.read_unscoped().await?;
    let rows = db::query(
        "SELECT job, last_run_at, last_ok, node, runs, detail FROM job_heartbeats ORDER BY job",
    )
    .fetch_all(tx.conn())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(JobRun {
                job: row.try_get(0)?,
                last_run_at: row.try_get(1)?,
                ok: row.try_get::<i64, _>(2)? != 0,
                node: row.try_get(3)?,
                runs: row.try_get(4)?,
                detail: row.try_get(5)?,
            })
        })
        .collect::<Result<_, db::Error>>()
        .map_err(StoreError::from)
}

/// Records one run of `job`.
pub async fn heartbeat(
    store: &Store,
    job: &'static str,
    ok: bool,
    detail: String,
) -> Result<(), StoreError> {
    let node = store.node().to_owned();
    store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                db::query(
                    "INSERT INTO job_heartbeats (job, last_run_at, last_ok, detail, node, runs) \
                     VALUES ($1, $2, $3, $4, $5, 1) \
                     ON CONFLICT (job) DO UPDATE SET last_run_at = excluded.last_run_at, \
                     last_ok = excluded.last_ok, detail = excluded.detail, node = excluded.node, \
                     runs = job_heartbeats.runs + 1",
                )
                .bind(job)
                .bind(crate::clock::now())
                .bind(i64::from(ok))
                .bind(detail)
                .bind(node)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
}

/// How soon after start a job first runs (sooner if its interval is
/// shorter): a fresh server's heartbeats are known at once.
pub const FIRST_RUN_AFTER: Duration = Duration::from_secs(2);

/// Runs `run` every `every` (the first time [`FIRST_RUN_AFTER`] after start)
/// until the process stops, recording a heartbeat after each run. A tick at
/// which another node holds the job's lease is skipped.
pub fn every<F, Fut>(store: Store, schedule: &Schedule, job: &'static str, every: Duration, run: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    every_from(store, schedule, job, FIRST_RUN_AFTER, every, run)
}

/// [`every`], the first time after `first` (or `every`, if shorter).
pub fn every_from<F, Fut>(
    store: Store,
    schedule: &Schedule,
    job: &'static str,
    first: Duration,
    every: Duration,
    run: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    schedule.add(job, every);
    tokio::spawn(async move {
        tokio::time::sleep(every.min(first)).await;
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !store.hold_lease(job).await {
                tracing::debug!(job, "another node runs this job");
                continue;
            }
            let ran = run().await;
            let (ok, detail) = match ran {
                Ok(detail) => (true, detail),
                Err(e) => {
                    tracing::error!(job, error = %e, "scheduled job failed");
                    (false, e)
                }
            };
            if let Err(e) = heartbeat(&store, job, ok, detail).await {
                tracing::warn!(job, error = %e, "could not record a heartbeat");
            }
            // Counted once the heartbeat is stored, so a scrape that sees
            // the run also sees its last-success time.
            crate::metrics::get().job_run(job, ok);
        }
    });
}

/// [`every`], and also whenever `woken` resolves (a waiting wake-up
/// counts): `run` is told whether this run is the periodic one (`true`,
/// at most every `every`) or an early one. Only periodic runs record a
/// heartbeat, so a busy job does not write one per wake-up.
pub fn every_or_woken<F, Fut, W, WFut>(
    store: Store,
    schedule: &Schedule,
    job: &'static str,
    every: Duration,
    woken: W,
    run: F,
) where
    F: Fn(bool) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
    W: Fn(Duration) -> WFut + Send + 'static,
    WFut: Future<Output = ()> + Send,
{
    schedule.add(job, every);
    tokio::spawn(async move {
        tokio::time::sleep(every.min(FIRST_RUN_AFTER)).await;
        let mut last_periodic: Option<std::time::Instant> = None;
        loop {
            let periodic = last_periodic.is_none_or(|at| at.elapsed() >= every);
            if periodic {
                last_periodic = Some(std::time::Instant::now());
            }
            if store.hold_lease(job).await {
                let ran = run(periodic).await;
                let ok = ran.is_ok();
                if let Err(e) = &ran {
                    tracing::error!(job, error = %e, "scheduled job failed");
                }
                if periodic || !ok {
                    let detail = ran.unwrap_or_else(|e| e);
                    if let Err(e) = heartbeat(&store, job, ok, detail).await {
                        tracing::warn!(job, error = %e, "could not record a heartbeat");
                    }
                }
                crate::metrics::get().job_run(job, ok);
            }
            let next = last_periodic.map_or(every, |at| every.saturating_sub(at.elapsed()));
            woken(next).await;
        }
    });
}
