//! Metrics (OPS-1): one registry per process, in the Prometheus text
//! format, served only on `metrics_listen` (never on the public listener).
//! Every layer counts into it, the write path included, so it sits at the
//! bottom and names nothing above it. What is only known at scrape time
//! (queue depths, pool use, job heartbeats) is set by the scrape itself.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route template (`/api/v1/records/{collection}/{id}`), never the
    /// path itself: ids and names would make every request a series.
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobResultLabels {
    pub job: String,
    pub result: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric this process keeps.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub write_batch_jobs: Histogram,
    pub write_commit_seconds: Histogram,
    pub write_batch_failures: Counter,
    /// Depths, set at scrape time: `writer`, `access_log`, `argon2`.
    pub queue_depth: Family<NameLabels, Gauge>,
    /// Jobs waiting for or on an Argon2 thread (kept as they come and go).
    pub argon2_queued: Gauge,
    /// Database connections, set at scrape time: `in_use`, `idle`, `max`.
    pub db_connections: Family<NameLabels, Gauge>,
    pub object_store_ops: Family<OpLabels, Counter>,
    pub access_log_dropped: Counter,
    pub rate_limited: Family<NameLabels, Counter>,
    pub bans: Counter,
    pub bans_active: Gauge,
    pub job_runs: Family<JobResultLabels, Counter>,
    /// Unix time of each job's last successful run, from the heartbeats.
    pub job_last_success: Family<JobLabels, Gauge>,
    /// BAK-1: how long the oldest journal entry not yet in the backup
    /// target has waited (0 when everything is shipped).
    pub backup_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub backup_segments: Counter,
    pub backup_failures: Counter,
    pub backup_drill_rto_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub backup_drill_rpo_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub backup_drill_failures: Counter,
    pub backup_follow_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("strongroom");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by route template and method",
            request_seconds.clone(),
        );
        let write_batch_jobs = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "write_batch_jobs",
            "Writes committed together by one group commit",
            write_batch_jobs.clone(),
        );
        let write_commit_seconds = latency_histogram();
        registry.register(
            "write_commit_duration_seconds",
            "Time one group commit took, its jobs and the commit",
            write_commit_seconds.clone(),
        );
        let write_batch_failures = Counter::default();
        registry.register(
            "write_batch_failures",
            "Group commits that failed and rolled back",
            write_batch_failures.clone(),
        );
        let queue_depth = Family::<NameLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Work waiting: the writer's jobs, access-log rows, Argon2 jobs",
            queue_depth.clone(),
        );
        let db_connections = Family::<NameLabels, Gauge>::default();
        registry.register(
            "db_connections",
            "Database connections of the read pool: in use, idle, and the most allowed",
            db_connections.clone(),
        );
        let object_store_ops = Family::<OpLabels, Counter>::default();
        registry.register(
            "object_store_operations",
            "Object-store operations, by operation and result",
            object_store_ops.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access-log rows dropped because the buffer was full",
            access_log_dropped.clone(),
        );
        let rate_limited = Family::<NameLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429, by limit",
            rate_limited.clone(),
        );
        let bans = Counter::default();
        registry.register(
            "bans",
            "Client addresses banned by this process",
            bans.clone(),
        );
        let bans_active = Gauge::default();
        registry.register(
            "bans_active",
            "Client addresses banned now (all nodes)",
            bans_active.clone(),
        );
        let job_runs = Family::<JobResultLabels, Counter>::default();
        registry.register(
            "job_runs",
            "Scheduled job runs on this process, by job and result",
            job_runs.clone(),
        );
        let job_last_success = Family::<JobLabels, Gauge>::default();
        registry.register(
            "job_last_success_timestamp_seconds",
            "When each scheduled job last succeeded, on any node (Unix time)",
            job_last_success.clone(),
        );
        let backup_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "backup_lag_seconds",
            "Age of the oldest committed journal entry not yet shipped to the backup target",
            backup_lag_seconds.clone(),
        );
        let backup_segments = Counter::default();
        registry.register(
            "backup_segments",
            "Journal segments shipped to the backup target",
            backup_segments.clone(),
        );
        let backup_failures = Counter::default();
        registry.register(
            "backup_failures",
            "Failed attempts to ship to the backup target",
            backup_failures.clone(),
        );
        let backup_drill_rto_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "backup_drill_rto_seconds",
            "How long the last restore drill took to rebuild a tenant from the backup target",
            backup_drill_rto_seconds.clone(),
        );
        let backup_drill_rpo_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "backup_drill_rpo_seconds",
            "How far the backup target was behind the live journal when the last drill began",
            backup_drill_rpo_seconds.clone(),
        );
        let backup_drill_failures = Counter::default();
        registry.register(
            "backup_drill_failures",
            "Restore drills that did not rebuild the live state",
            backup_drill_failures.clone(),
        );
        let backup_follow_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "backup_follow_lag_seconds",
            "On a standby: how long the oldest shipped entry not yet applied has waited",
            backup_follow_lag_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            write_batch_jobs,
            write_commit_seconds,
            write_batch_failures,
            queue_depth,
            argon2_queued: Gauge::default(),
            db_connections,
            object_store_ops,
            access_log_dropped,
            rate_limited,
            bans,
            bans_active,
            job_runs,
            job_last_success,
            backup_lag_seconds,
            backup_segments,
            backup_failures,
            backup_drill_rto_seconds,
            backup_drill_rpo_seconds,
            backup_drill_failures,
            backup_follow_lag_seconds,
        }
    }

    /// One answered request. Each worker thread keeps the series it has
    /// used, so that a request builds no labels and takes no family lock.
    pub fn request(&self, method: &str, route: Option<&str>, status: u16, took: Duration) {
        // Unmatched paths share one series, so a scan cannot grow the set.
        let route = route.unwrap_or("unmatched");
        let observe = |series: &Series| {
            series.count.inc();
            series.seconds.observe(took.as_secs_f64());
        };
        let known = SERIES.with_borrow(|cache| {
            cache
                .get(route)
                .and_then(|by| by.iter().find(|s| s.method == method && s.status == status))
                .map(observe)
                .is_some()
        });
        if known {
            return;
        }
        let series = Series {
            method: method.to_owned(),
            status,
            count: self
                .requests
                .get_or_create(&RequestLabels {
                    method: method.to_owned(),
                    route: route.to_owned(),
                    status: status.to_string(),
                })
                .clone(),
            seconds: self
                .request_seconds
                .get_or_create(&RouteLabels {
                    method: method.to_owned(),
                    route: route.to_owned(),
                })
                .clone(),
        };
        observe(&series);
        SERIES.with_borrow_mut(|cache| cache.entry(route.to_owned()).or_default().push(series));
    }

    /// One group commit of `jobs` that took `took`.
    pub fn write_batch(&self, jobs: usize, took: Duration, ok: bool) {
        self.write_batch_jobs.observe(jobs as f64);
        self.write_commit_seconds.observe(took.as_secs_f64());
        if !ok {
            self.write_batch_failures.inc();
        }
    }

    pub fn set_queue_depth(&self, name: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&NameLabels {
                name: name.to_owned(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub fn set_db_connections(&self, name: &str, count: usize) {
        self.db_connections
            .get_or_create(&NameLabels {
                name: name.to_owned(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn object_store(&self, op: &str, ok: bool) {
        self.object_store_ops
            .get_or_create(&OpLabels {
                op: op.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    pub fn rate_limited(&self, limit: &str) {
        self.rate_limited
            .get_or_create(&NameLabels {
                name: limit.to_owned(),
            })
            .inc();
    }

    pub fn job_run(&self, job: &str, ok: bool) {
        self.job_runs
            .get_or_create(&JobResultLabels {
                job: job.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    pub fn set_job_last_success(&self, job: &str, unix: i64) {
        self.job_last_success
            .get_or_create(&JobLabels {
                job: job.to_owned(),
            })
            .set(unix);
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.set_queue_depth(
            "argon2",
            usize::try_from(self.argon2_queued.get()).unwrap_or(0),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// A request series as one thread holds it (the same counter and histogram
/// as the registry's).
struct Series {
    method: String,
    status: u16,
    count: Counter,
    seconds: Histogram,
}

thread_local! {
    /// By route template: the series this thread has counted into. Bounded
    /// by routes × methods × statuses (unmatched paths share one route).
    static SERIES: std::cell::RefCell<std::collections::HashMap<String, Vec<Series>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// This process's metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_each_family_once_and_counts_requests_by_template() {
        let metrics = Metrics::new();
        metrics.request(
            "GET",
            Some("/api/v1/records/{collection}/{id}"),
            200,
            Duration::from_millis(2),
        );
        metrics.request("GET", None, 404, Duration::from_millis(1));
        metrics.write_batch(3, Duration::from_millis(4), true);
        let text = metrics.encode();
        assert!(text.contains(
            "strongroom_http_requests_total{method=\"GET\",route=\"/api/v1/records/{collection}/{id}\",status=\"200\"} 1"
        ), "{text}");
        assert!(
            text.contains("route=\"unmatched\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("strongroom_write_batch_jobs_count 1"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE strongroom_http_requests counter")
                .count(),
            1
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
