//! Two app servers on one PostgreSQL and one object store (README,
//! "Several app servers"): requests alternate between them, revocations on
//! one hold on the other, and every scheduled job runs on one node at a
//! time and moves when that node dies.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection, Row};

use crate::helpers::{ServerProcess, fresh_database, temp_dir};

/// Jobs every node starts; the test runs them every second.
const JOBS: [&str; 3] = ["audit.checkpoint", "audit.retention", "files.sweep"];

/// Each job's (node, runs) as the heartbeats say.
async fn heartbeats(url: &str) -> BTreeMap<String, (String, i64)> {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(url).await.unwrap();
    let rows = sqlx::query("SELECT job, node, runs FROM job_heartbeats")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    rows.iter()
        .map(|r| {
            let node: Option<String> = r.get(1);
            (r.get(0), (node.unwrap_or_default(), r.get(2)))
        })
        .collect()
}

/// The node a server process calls itself: host, pid, random suffix.
fn runs_on(node: &str, server: &ServerProcess) -> bool {
    node.contains(&format!("-{}-", server.child.id()))
}

/// The environment that puts both nodes on the test S3 server, if any, and
/// makes every job tick each second.
fn node_env() -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("STRONGROOM_AUDIT_CHECKPOINT_SECONDS", "1".to_owned()),
        ("STRONGROOM_RETENTION_INTERVAL_SECONDS", "1".to_owned()),
        ("STRONGROOM_FILE_SWEEP_SECONDS", "1".to_owned()),
    ];
    if let Ok(endpoint) = std::env::var("STRONGROOM_TEST_S3_ENDPOINT") {
        env.push((
            "STRONGROOM_OBJECT_STORE_URL",
            format!(
                "s3://strongroom-test/{}?endpoint={endpoint}&region=us-east-1",
                uuid::Uuid::new_v4().simple()
            ),
        ));
        env.push(("STRONGROOM_OBJECT_STORE_ACCESS_KEY_ID", "test".to_owned()));
        env.push((
            "STRONGROOM_OBJECT_STORE_SECRET_ACCESS_KEY",
            "test".to_owned(),
        ));
    }
    env
}

async fn call(
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = crate::helpers::http_client()
        .request(method, url)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    crate::helpers::send(request).await
}

#[tokio::test]
async fn two_app_servers_share_sessions_revocations_and_scheduled_jobs() {
    if !crate::helpers::is_postgres() {
        eprintln!("two app servers need PostgreSQL: set STRONGROOM_TEST_PG_URL");
        return;
    }
    let dir = temp_dir("cluster");
    let url = fresh_database(&dir).await;
    let env = node_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // One data dir: both nodes use the same master key (on a real
    // deployment, the same key file or STRONGROOM_MASTER_KEY).
    let mut a = Some(ServerProcess::start_with_env(&dir, &url, "warn", &env).await);
    let b = ServerProcess::start_with_env(&dir, &url, "warn", &env).await;
    let a_address = a.as_ref().unwrap().address.clone();
    let (get, post, delete, put) = (
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
    );

    // A token issued by one node works on the other, request after request.
    let (token, _) = crate::durability::tenant_admin_token(a.as_ref().unwrap(), &dir, &url).await;
    let (status, body) = call(
        post.clone(),
        format!("{}/api/v1/collections", b.address),
        &token,
        Some(json!({"name": "patients", "fields": [
            {"name": "name", "type": "text", "personal": true, "required": true}
        ]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut ids = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { &a_address } else { &b.address };
        let (status, body) = call(
            post.clone(),
            format!("{node}/api/v1/collections/patients/records"),
            &token,
            Some(json!({"name": format!("patient {i}")})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let record = |node: &str, id: &str| format!("{node}/api/v1/collections/patients/records/{id}");
    for (i, id) in ids.iter().enumerate() {
        let node = if i % 2 == 0 { &b.address } else { &a_address };
        let (status, body) = call(get.clone(), record(node, id), &token, None).await;
        assert_eq!(
            (status, body["name"].clone()),
            (200, json!(format!("patient {i}")))
        );
    }

    // Writes racing on both nodes for the same tenant and the same records
    // (each node batches its writes): all succeed, none deadlocks or 500s.
    let mut racing = tokio::task::JoinSet::new();
    for i in 0..48 {
        let node = if i % 2 == 0 {
            a_address.clone()
        } else {
            b.address.clone()
        };
        let (token, id) = (token.clone(), ids[i % 2].clone());
        racing.spawn(async move {
            let (method, url, body) = if i % 3 == 0 {
                let url = format!("{node}/api/v1/collections/patients/records");
                (
                    reqwest::Method::POST,
                    url,
                    json!({"name": format!("raced {i}")}),
                )
            } else {
                let url = format!("{node}/api/v1/collections/patients/records/{id}");
                (
                    reqwest::Method::PATCH,
                    url,
                    json!({"name": format!("patched {i}")}),
                )
            };
            call(method, url, &token, Some(body)).await
        });
    }
    while let Some(done) = racing.join_next().await {
        let (status, body) = done.unwrap();
        assert!(status == 200 || status == 201, "{status}: {body}");
    }

    // A tenant key revoked on B locks the data on A at once, although A
    // holds the unwrapped key in its cache (key_cache_seconds is 60).
    use base64::Engine;
    let key =
        base64::engine::general_purpose::STANDARD.encode(strongroom::crypto::random_bytes::<32>());
    let byok = |node: &str| format!("{node}/api/v1/tenant/keys/byok");
    let (status, body) = call(
        put.clone(),
        byok(&b.address),
        &token,
        Some(json!({"key": key})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(get.clone(), record(&a_address, &ids[0]), &token, None).await;
    assert_eq!(status, 200, "A reads with the tenant's key, and caches it");
    let (status, body) = call(delete.clone(), byok(&b.address), &token, None).await;
    assert_eq!(status, 200, "{body}");
    let revoked = Instant::now();
    loop {
        let (status, _) = call(get.clone(), record(&a_address, &ids[0]), &token, None).await;
        if status == 423 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "A still opened the data 5 s after B revoked the key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = call(
        put.clone(),
        byok(&a_address),
        &token,
        Some(json!({"key": key})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(get.clone(), record(&b.address, &ids[1]), &token, None).await;
    assert_eq!(status, 200, "the same key, supplied on A, unlocks B too");

    // A logout on A ends the session on B as soon as B hears of it, and
    // within the session-check lifetime at the latest, although B checked
    // the session a moment ago and holds that check.
    let me = |node: &str| format!("{node}/api/v1/me");
    let (status, _) = call(get.clone(), me(&b.address), &token, None).await;
    assert_eq!(status, 200);
    let (status, _) = call(
        post.clone(),
        format!("{a_address}/api/v1/auth/logout"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let logged_out = Instant::now();
    let (status, _) = call(get.clone(), me(&a_address), &token, None).await;
    assert_eq!(status, 401, "A accepted a token it logged out");
    loop {
        let (status, _) = call(get.clone(), me(&b.address), &token, None).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            logged_out.elapsed() < strongroom::identity::SESSION_CHECK_TTL * 2,
            "B still accepted a token logged out on A after the session-check lifetime"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B's check would have lapsed only about a lifetime after it was made,
    // just before the logout: well before that, it was the announcement.
    let heard_after = logged_out.elapsed();
    assert!(
        heard_after < strongroom::identity::SESSION_CHECK_TTL / 2,
        "B heard of the logout only after {heard_after:?}: the announcement did not arrive"
    );

    // Each job runs on one node at a time, once per interval: watched for
    // a few seconds, every job's runs grow by about one a second (two
    // nodes running it would double that) and its node never changes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while heartbeats(&url).await.len() < JOBS.len() {
        assert!(Instant::now() < deadline, "the jobs did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = heartbeats(&url).await;
    let watched = Instant::now();
    let mut nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    while watched.elapsed() < Duration::from_secs(6) {
        for (job, (node, _)) in heartbeats(&url).await {
            nodes.entry(job).or_default().insert(node);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let end = heartbeats(&url).await;
    let seconds = watched.elapsed().as_secs_f64();
    for job in JOBS {
        let ran = end[job].1 - start[job].1;
        assert!(
            ran >= 2 && (ran as f64) <= seconds + 2.0,
            "{job} ran {ran} times in {seconds:.1} s at one run a second"
        );
        assert_eq!(nodes[job].len(), 1, "{job} ran on {:?}", nodes[job]);
        let node = &end[job].0;
        assert!(
            runs_on(node, a.as_ref().unwrap()) || runs_on(node, &b),
            "{job} ran on {node}, neither server"
        );
    }

    // Kill the node that runs the checkpoints: within a few intervals the
    // survivor runs every job.
    let holder_is_a = runs_on(&end["audit.checkpoint"].0, a.as_ref().unwrap());
    let (killed, survivor) = if holder_is_a {
        (a.take().unwrap(), b)
    } else {
        (b, a.take().unwrap())
    };
    let mut killed = killed;
    // SIGKILL: no shutdown, no goodbye to PostgreSQL.
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let died = Instant::now();
    let before = heartbeats(&url).await;
    loop {
        let now = heartbeats(&url).await;
        let moved = JOBS
            .iter()
            .all(|job| runs_on(&now[*job].0, &survivor) && now[*job].1 > before[*job].1);
        if moved {
            break;
        }
        assert!(
            died.elapsed() < Duration::from_secs(15),
            "jobs did not move to the survivor: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = call(
        get,
        format!(
            "{}/api/v1/collections/patients/records/{}",
            survivor.address, ids[2]
        ),
        &token,
        None,
    )
    .await;
    assert_eq!(
        status, 401,
        "the logged-out token stays dead on the survivor"
    );
    survivor.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
