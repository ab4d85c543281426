use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn ctl_aud_2_every_request_reads_included_is_in_the_access_log_with_all_fields() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let record = app.create_order(&admin, json!({"title": "logged"})).await;
    let id = record["id"].as_str().unwrap();
    let res = app
        .get(
            &format!("/api/v1/collections/work_orders/records/{id}?unused=secret-filter"),
            &admin.access_token,
        )
        .await;
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let missing = app
        .get(
            "/api/v1/collections/work_orders/records/nope",
            &admin.access_token,
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let rows = app.access_log(&admin.access_token, "").await;
    let read = rows
        .iter()
        .find(|r| r["request_id"] == request_id.as_str())
        .expect("the read is logged");
    assert_eq!(read["method"], "GET");
    assert_eq!(read["route"], "/api/v1/collections/{name}/records/{id}");
    assert_eq!(
        read["path"],
        format!("/api/v1/collections/work_orders/records/{id}")
    );
    assert_eq!(read["activity"], "read");
    assert_eq!(read["status"], 200);
    assert!(read["latency_us"].as_i64().unwrap() > 0);
    assert_eq!(read["ip"], "127.0.0.1");
    assert_eq!(read["user_agent"], "strongroom-tests/1");
    assert_eq!(read["tenant_id"], admin.tenant_id.as_str());
    assert_eq!(read["actor_type"], "user");
    assert_eq!(read["actor_id"], admin.user_id.as_str());
    assert_eq!(read["actor_email"], "admin@acme.test");
    assert_eq!(read["app_version"], strongroom::VERSION);
    assert!(
        !read.to_string().contains("secret-filter"),
        "query strings are not logged"
    );
    // Creates, failures and logins are there too, each with its activity.
    assert!(
        rows.iter()
            .any(|r| r["activity"] == "create" && r["status"] == 201)
    );
    assert!(
        rows.iter()
            .any(|r| r["status"] == 404 && r["route"] == "/api/v1/collections/{name}/records/{id}")
    );
    assert!(
        rows.iter()
            .any(|r| r["activity"] == "auth" && r["path"] == "/api/v1/auth/invitations/accept")
    );

    // Filters.
    let only_404 = app.access_log(&admin.access_token, "&status=404").await;
    assert!(!only_404.is_empty() && only_404.iter().all(|r| r["status"] == 404));
    let prefix = app
        .access_log(
            &admin.access_token,
            "&path_prefix=/api/v1/collections/work_orders",
        )
        .await;
    assert!(!prefix.is_empty());
    assert!(prefix.iter().all(|r| {
        r["path"]
            .as_str()
            .unwrap()
            .starts_with("/api/v1/collections/work_orders")
    }));
    let by_user = app
        .access_log(&admin.access_token, "&user=admin@acme.test")
        .await;
    assert!(
        by_user
            .iter()
            .all(|r| r["actor_email"] == "admin@acme.test")
    );
    problem(
        app.get("/api/v1/access-log?status=999", &admin.access_token)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.get("/api/v1/access-log?from=yesterday", &admin.access_token)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
}

#[tokio::test]
async fn ctl_aud_2_the_access_log_is_tenant_scoped_and_for_admins_and_auditors_only() {
    let app = spawn_app().await;
    let a = app.admin("acme").await;
    let b = app.admin("globex").await;
    app.get("/api/v1/me", &b.access_token).await;
    let rows = app.access_log(&a.access_token, "").await;
    assert!(rows.iter().all(|r| r["tenant_id"] == a.tenant_id.as_str()));
    let viewer = app.user(&a, "viewer@acme.test", "viewer").await;
    let auditor = app.user(&a, "auditor@acme.test", "auditor").await;
    problem(
        app.get("/api/v1/access-log", &viewer.access_token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    problem(
        app.get("/api/v1/audit", &viewer.access_token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        app.get("/api/v1/access-log", &auditor.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/audit", &auditor.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    // An auditor reads the trail and nothing else.
    problem(
        app.get("/api/v1/collections", &auditor.access_token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    problem(
        app.get("/api/v1/users", &auditor.access_token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn ctl_aud_2_x_forwarded_for_counts_only_from_a_trusted_proxy() {
    for (trusted, expected) in [
        (vec!["127.0.0.1".to_owned()], "203.0.113.5"),
        (vec![], "127.0.0.1"),
    ] {
        let app = spawn_app_with(|c| c.trusted_proxies = trusted.clone()).await;
        let admin = app.admin("acme").await;
        let res = app
            .client
            .get(format!("{}/api/v1/me", app.address))
            .bearer_auth(&admin.access_token)
            .header("x-forwarded-for", "6.6.6.6, 203.0.113.5")
            .send()
            .await
            .unwrap();
        let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let rows = app.access_log(&admin.access_token, "").await;
        let row = rows
            .iter()
            .find(|r| r["request_id"] == request_id.as_str())
            .unwrap();
        assert_eq!(row["ip"], expected, "trusted proxies {trusted:?}");
        // The audit trail uses the same address.
        let res = app
            .client
            .post(format!("{}/api/v1/collections", app.address))
            .bearer_auth(&admin.access_token)
            .header("x-forwarded-for", "203.0.113.5")
            .json(&json!({"name": "c", "fields": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let events = app.audit(&admin).await;
        let event = events
            .iter()
            .find(|e| e["action"] == "collection.create")
            .unwrap();
        assert_eq!(event["ip"], expected);
    }
}

pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

#[tokio::test]
async fn ctl_aud_4_access_log_exports_match_the_list_api() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    for _ in 0..3 {
        app.get("/api/v1/me", &admin.access_token).await;
    }
    let listed = app.access_log(&admin.access_token, "").await;
    let jsonl = app
        .get(
            "/api/v1/access-log/export?format=jsonl",
            &admin.access_token,
        )
        .await;
    assert_eq!(jsonl.headers()["content-type"], "application/jsonl");
    let exported: Vec<Value> = jsonl
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut expected = listed.clone();
    expected.reverse();
    assert_eq!(&exported[..expected.len()], &expected[..]);
    let csv = app
        .get("/api/v1/access-log/export?format=csv", &admin.access_token)
        .await;
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let rows = parse_csv(&csv.text().await.unwrap());
    assert_eq!(rows[0][0], "occurred_at");
    let id_column = rows[0].iter().position(|c| c == "id").unwrap();
    let ids: Vec<&str> = rows[1..=expected.len()]
        .iter()
        .map(|r| r[id_column].as_str())
        .collect();
    let want: Vec<&str> = expected.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, want);
}

/// Rows are written many to a statement; a burst larger than one statement
/// takes must still be logged whole, each row once.
#[tokio::test]
async fn ctl_aud_2_a_burst_of_requests_is_logged_whole() {
    // The burst comes from one address over as many connections as the
    // client opens: more than the per-address cap lets in by default.
    let app = crate::helpers::spawn_app_with(|c| {
        c.max_connections = 4_000;
        c.max_connections_per_ip = 2_000;
    })
    .await;
    let admin = app.admin("acme").await;
    let burst = 1_234;
    let requests = (0..burst).map(|_| app.get("/api/v1/collections", &admin.access_token));
    for res in futures_util::future::join_all(requests).await {
        assert_eq!(res.status(), StatusCode::OK);
    }
    app.state.access_log.flush().await;
    let logged = app
        .count(&format!(
            "SELECT COUNT(*) FROM access_log WHERE tenant_id = '{}' AND route = '/api/v1/collections' \
             AND method = 'GET'",
            admin.tenant_id
        ))
        .await;
    assert_eq!(logged, burst);
    let distinct = app
        .count("SELECT COUNT(DISTINCT request_id) FROM access_log")
        .await;
    assert_eq!(distinct, app.count("SELECT COUNT(*) FROM access_log").await);
}
