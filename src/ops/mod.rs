//! Scheduled jobs and their heartbeats (OPS-1, first cut): every job records
//! when it last ran, on which node, how often, and whether it succeeded, so
//! a stalled job is visible. With several app servers on one PostgreSQL a
//! job runs on the one node holding its lease (`Store::hold_lease`).

use std::future::Future;
use std::time::Duration;

use crate::store::db;
use crate::store::{Store, StoreError};

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

/// Runs `run` every `every` (the first time after one period) until the
/// process stops, recording a heartbeat after each run. A tick at which
/// another node holds the job's lease is skipped.
pub fn every<F, Fut>(store: Store, job: &'static str, every: Duration, run: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if !store.hold_lease(job).await {
                tracing::debug!(job, "another node runs this job");
                continue;
            }
            let (ok, detail) = match run().await {
                Ok(detail) => (true, detail),
                Err(e) => {
                    tracing::error!(job, error = %e, "scheduled job failed");
                    (false, e)
                }
            };
            if let Err(e) = heartbeat(&store, job, ok, detail).await {
                tracing::warn!(job, error = %e, "could not record a heartbeat");
            }
        }
    });
}
