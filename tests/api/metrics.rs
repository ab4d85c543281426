//! Metrics (OPS-1): Prometheus text on `metrics_listen` only, moving with
//! requests, writes and scheduled jobs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::helpers::{ServerProcess, fresh_database, temp_dir};

/// Every sample of a scrape by series (`name{labels}`), checking that each
/// line is a comment or `series value` with a number for a value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        let name_ok = series.split('{').next().is_some_and(|n| {
            !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        assert!(name_ok, "a bad metric name in {line:?}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// The official Prometheus client's parsers (OpenMetrics, and the classic
/// text format Prometheus scrapes) read the text; the test command
/// installs them and names the interpreter in STRONGROOM_TEST_PYTHON.
fn parsed_by_prometheus_client(text: &str) -> Option<usize> {
    let python = std::env::var("STRONGROOM_TEST_PYTHON").ok()?;
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as om\n\
        from prometheus_client.parser import text_string_to_metric_families as prom\n\
        text = sys.stdin.read()\n\
        families = list(om(text))\n\
        assert len(list(prom(text))) > 0\n\
        print(len(families))\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus client cannot parse /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[tokio::test]
async fn ctl_ops_1_metrics_parse_as_prometheus_text_and_move_with_requests_and_jobs() {
    let dir = temp_dir("metrics");
    let url = fresh_database(&dir).await;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let server = ServerProcess::start_with_env(
        &dir,
        &url,
        "warn",
        &[
            ("STRONGROOM_METRICS_LISTEN", metrics_listen.as_str()),
            ("STRONGROOM_AUDIT_CHECKPOINT_SECONDS", "1"),
        ],
    )
    .await;
    let client = crate::helpers::http_client();
    let scrape = || async {
        let res = client
            .get(format!("http://{metrics_listen}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        res.text().await.unwrap()
    };
    let first = scrape().await;
    let before = samples(&first);
    // Never on the public listener.
    let res = client
        .get(format!("{}/metrics", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    for _ in 0..3 {
        let res = client
            .get(format!("{}/healthz", server.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // Let the checkpoint job run (every second here).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, after) = loop {
        let text = scrape().await;
        let after = samples(&text);
        // The counter moves after the heartbeat is stored: wait for both.
        let counted = after
            .keys()
            .any(|k| k.starts_with("strongroom_job_runs_total{job=\"audit.checkpoint\""));
        if (counted
            && after.contains_key(
                "strongroom_job_last_success_timestamp_seconds{job=\"audit.checkpoint\"}",
            ))
            || Instant::now() > deadline
        {
            break (text, after);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let health = "strongroom_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}";
    assert!(
        after[health] >= before.get(health).copied().unwrap_or(0.0) + 3.0,
        "{text}"
    );
    let unmatched =
        "strongroom_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}";
    assert!(after[unmatched] >= 1.0, "404s share one series: {text}");
    assert!(
        after.contains_key("strongroom_http_request_duration_seconds_bucket{le=\"0.0001\",method=\"GET\",route=\"/healthz\"}")
            || after.keys().any(|k| k.starts_with("strongroom_http_request_duration_seconds_bucket") && k.contains("/healthz")),
        "{text}"
    );
    // The start wrote through the write path; the checkpoint job ran.
    assert!(after["strongroom_write_batch_jobs_count"] >= 1.0, "{text}");
    assert!(after.contains_key("strongroom_write_commit_duration_seconds_sum"));
    assert!(
        after.iter().any(|(k, v)| k
            .starts_with("strongroom_job_runs_total{job=\"audit.checkpoint\",result=\"ok\"")
            && *v >= 1.0),
        "{text}"
    );
    assert!(
        after["strongroom_job_last_success_timestamp_seconds{job=\"audit.checkpoint\"}"]
            > (time::OffsetDateTime::now_utc().unix_timestamp() - 60) as f64,
        "{text}"
    );
    for series in [
        "strongroom_queue_depth{name=\"writer\"}",
        "strongroom_queue_depth{name=\"access_log\"}",
        "strongroom_queue_depth{name=\"argon2\"}",
        "strongroom_bans_active",
        "strongroom_access_log_dropped_total",
    ] {
        assert!(after.contains_key(series), "{series} missing: {text}");
    }
    if crate::helpers::is_postgres() {
        assert!(
            after["strongroom_db_connections{name=\"max\"}"] >= 1.0,
            "{text}"
        );
    }
    match parsed_by_prometheus_client(&text) {
        Some(families) => assert!(families >= 10, "{families} families"),
        None => eprintln!("STRONGROOM_TEST_PYTHON unset: checked by this test's own reader only"),
    }
    server.stop().await;
}
