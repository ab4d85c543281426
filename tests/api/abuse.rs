//! Abuse protection (NET-3): request rate limits per user and address,
//! automatic bans that grow and expire, shared by every app server; and
//! the metrics that show them (OPS-1).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{ServerProcess, fresh_database, spawn_app_with, temp_dir};

/// Asks `url` until it answers `status`, for up to `within`.
async fn until_status(url: &str, status: StatusCode, within: Duration) -> reqwest::Response {
    let client = crate::helpers::http_client();
    let deadline = Instant::now() + within;
    loop {
        let res = client.get(url).send().await.unwrap();
        if res.status() == status {
            return res;
        }
        assert!(
            Instant::now() < deadline,
            "{url} answered {} for {within:?}, not {status}: {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two `serve` processes on one fresh PostgreSQL database with `env`, and
/// the data dir and URL they share; `None` (said) on SQLite.
async fn two_nodes(
    label: &str,
    env: &[(&str, &str)],
) -> Option<(std::path::PathBuf, String, ServerProcess, ServerProcess)> {
    if !crate::helpers::is_postgres() {
        eprintln!("two app servers need PostgreSQL: set STRONGROOM_TEST_PG_URL");
        return None;
    }
    let dir = temp_dir(label);
    let url = fresh_database(&dir).await;
    let a = ServerProcess::start_with_env(&dir, &url, "warn", env).await;
    let b = ServerProcess::start_with_env(&dir, &url, "warn", env).await;
    Some((dir, url, a, b))
}

fn seconds_between(from: &str, to: &str) -> i64 {
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    };
    (parse(to) - parse(from)).whole_seconds()
}

#[tokio::test]
async fn ctl_net_3_a_404_flood_earns_a_ban_that_grows_expires_and_can_be_lifted() {
    let app = spawn_app_with(|c| {
        c.ban_after_strikes = 5;
        c.ban_window_seconds = 60;
        c.ban_seconds = 2;
    })
    .await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    // Probing for ids as an authenticated user: five misses are answered …
    for _ in 0..5 {
        let res = app
            .get(
                &format!(
                    "/api/v1/collections/work_orders/records/{}",
                    uuid::Uuid::now_v7()
                ),
                &admin.access_token,
            )
            .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    // … a real request in between is not a strike …
    let res = app
        .get(
            "/api/v1/collections/work_orders/records",
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // … and the sixth miss earns the ban: everything from the address is
    // refused, the right token and the health check too.
    let res = app
        .get(
            &format!(
                "/api/v1/collections/work_orders/records/{}",
                uuid::Uuid::now_v7()
            ),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let health = format!("{}/healthz", app.address);
    let res = until_status(&health, StatusCode::FORBIDDEN, Duration::from_secs(3)).await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "urn:strongroom:problem:banned");
    let res = app
        .get(
            "/api/v1/collections/work_orders/records",
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // The operator sees it, and the tenant's trail records it.
    let listed: Vec<Value> =
        serde_json::from_str(app.cli_ok(&["bans", "list", "--json"]).await.trim()).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["ip"], "127.0.0.1");
    assert_eq!(listed[0]["level"], 1);
    assert_eq!(
        seconds_between(
            listed[0]["banned_at"].as_str().unwrap(),
            listed[0]["until"].as_str().unwrap()
        ),
        2
    );
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'security.ip_banned' \
             AND outcome = 'denied'"
        )
        .await,
        1
    );

    // It expires by itself …
    until_status(&health, StatusCode::OK, Duration::from_secs(5)).await;
    // … and the next one, earned within a day, lasts twice as long.
    for _ in 0..6 {
        let res = app.get("/api/v1/nothing-here", &admin.access_token).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    until_status(&health, StatusCode::FORBIDDEN, Duration::from_secs(3)).await;
    let listed: Vec<Value> = serde_json::from_str(
        app.cli_ok(&["bans", "list", "--json", "--active"])
            .await
            .trim(),
    )
    .unwrap();
    assert_eq!(listed[0]["level"], 2);
    assert_eq!(
        seconds_between(
            listed[0]["banned_at"].as_str().unwrap(),
            listed[0]["until"].as_str().unwrap()
        ),
        4
    );
    // An operator may lift it at once; the server honours it within 2 s.
    app.cli_ok(&["bans", "lift", "127.0.0.1"]).await;
    until_status(&health, StatusCode::OK, Duration::from_secs(3)).await;
    let listed: Vec<Value> = serde_json::from_str(
        app.cli_ok(&["bans", "list", "--json", "--active"])
            .await
            .trim(),
    )
    .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    // Lifting what is not banned says so.
    let out = app
        .cli()
        .await
        .args(["bans", "lift", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not banned"));
}

#[tokio::test]
async fn ctl_net_3_failed_logins_count_and_exempt_addresses_are_never_banned() {
    let app = spawn_app_with(|c| {
        c.ban_after_strikes = 3;
        c.login_attempts_per_minute_per_account = 100;
        // The limiter under test, without IAM-6's delays in front of it.
        c.login_lockout = false;
        c.rate_limit_exempt = vec!["127.0.0.1".into()];
    })
    .await;
    let _admin = app.admin("acme").await;
    for _ in 0..10 {
        let res = app
            .post(
                "/api/v1/auth/login",
                None,
                serde_json::json!({"tenant": "acme", "email": "admin@acme.test", "password": "wrong password 123"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "an exempt address was banned");
    assert_eq!(app.count("SELECT COUNT(*) FROM ip_bans").await, 0);
}

#[tokio::test]
async fn ctl_net_3_two_app_servers_on_one_postgres_share_strikes_and_bans() {
    let Some((dir, url, a, b)) = two_nodes(
        "bans",
        &[
            ("STRONGROOM_BAN_AFTER_STRIKES", "5"),
            ("STRONGROOM_BAN_SECONDS", "60"),
        ],
    )
    .await
    else {
        return;
    };
    let client = crate::helpers::http_client();
    // Three misses on each node: neither alone has seen more than five …
    for server in [&a, &b, &a, &b, &a, &b] {
        let res = client
            .get(format!("{}/no-such-route", server.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    // … together they have, and both refuse the address.
    let started = Instant::now();
    until_status(
        &format!("{}/healthz", a.address),
        StatusCode::FORBIDDEN,
        Duration::from_secs(3),
    )
    .await;
    until_status(
        &format!("{}/healthz", b.address),
        StatusCode::FORBIDDEN,
        Duration::from_secs(3),
    )
    .await;
    eprintln!("both nodes refused within {:?}", started.elapsed());
    // Lifted through either, both let it in again.
    let out = crate::helpers::cli(&dir, &url)
        .args(["bans", "lift", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for server in [&a, &b] {
        until_status(
            &format!("{}/healthz", server.address),
            StatusCode::OK,
            Duration::from_secs(3),
        )
        .await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn ctl_net_3_authenticated_requests_over_the_per_user_rate_get_429() {
    let app = spawn_app_with(|c| {
        c.requests_per_second_per_user = 5;
        c.requests_per_second_per_ip = 1000;
    })
    .await;
    let admin = app.admin("acme").await;
    let other = app.user(&admin, "other@acme.test", "member").await;
    app.work_orders(&admin).await;
    let path = format!("{}/api/v1/collections/work_orders/records", app.address);
    // A fresh second's worth of tokens after the setup's requests.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let burst: Vec<_> = (0..20)
        .map(|_| {
            app.client
                .get(&path)
                .bearer_auth(&admin.access_token)
                .send()
        })
        .collect();
    let answers = futures_util::future::join_all(burst).await;
    let mut ok = 0;
    let mut limited = Vec::new();
    for res in answers {
        let res = res.unwrap();
        match res.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited.push(res),
            other => panic!("unexpected {other}"),
        }
    }
    assert!((5..=7).contains(&ok), "{ok} of 20 answered");
    let res = limited.pop().unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "urn:strongroom:problem:too-many-requests");
    // Another user from the same address is not held up.
    let res = app
        .get(
            "/api/v1/collections/work_orders/records",
            &other.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // A second later the first user may go on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = app
        .get(
            "/api/v1/collections/work_orders/records",
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn ctl_net_3_racing_password_guesses_on_two_app_servers_share_one_limit() {
    let Some((_dir, url, a, b)) = two_nodes(
        "login-limits",
        &[
            ("STRONGROOM_LOGIN_ATTEMPTS_PER_MINUTE_PER_ACCOUNT", "4"),
            ("STRONGROOM_LOGIN_ATTEMPTS_PER_MINUTE_PER_IP", "1000"),
            // The shared limiter under test, without IAM-6's delays (its
            // own race is races::ctl_iam_6_…).
            ("STRONGROOM_LOGIN_LOCKOUT", "false"),
        ],
    )
    .await
    else {
        return;
    };
    let client = crate::helpers::http_client();
    // Twelve guesses at one account at once, half on each node.
    let guesses: Vec<_> = (0..12)
        .map(|i| {
            let server = if i % 2 == 0 { &a } else { &b };
            client
                .post(format!("{}/api/v1/auth/login", server.address))
                .json(&serde_json::json!({"tenant": "acme", "email": "boss@acme.test", "password": "wrong password 123"}))
                .send()
        })
        .collect();
    let statuses: Vec<u16> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(|res| res.unwrap().status().as_u16())
        .collect();
    let answered = statuses.iter().filter(|s| **s != 429).count();
    assert_eq!(
        answered, 4,
        "the limit of 4 held across nodes: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
    // Another account is not held up, on either node.
    for server in [&a, &b] {
        let res = client
            .post(format!("{}/api/v1/auth/login", server.address))
            .json(&serde_json::json!({"tenant": "acme", "email": "other@acme.test", "password": "wrong password 123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // No e-mail address is kept in the shared buckets.
    sqlx::any::install_default_drivers();
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM rate_buckets")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(keys.len() >= 3, "{keys:?}");
    assert!(
        keys.iter().all(|k| !k.contains('@') && k.len() == 32),
        "{keys:?}"
    );
    conn.close().await.unwrap();
    a.stop().await;
    b.stop().await;
}
