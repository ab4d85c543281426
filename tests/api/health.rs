use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn healthz_reports_status_and_the_build_version() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    let version = body["version"].as_str().unwrap();
    assert!(
        version.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+")),
        "{version}"
    );
    assert_eq!(version, strongroom::VERSION);
}

#[tokio::test]
async fn readyz_answers_once_the_database_does() {
    let app = spawn_app().await;
    let body: Value = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ready");
    let expected = if crate::helpers::is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(body["database"], expected);
}

#[tokio::test]
async fn openapi_document_is_3_1_and_covers_every_route() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let expected = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/refresh", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/auth/invitations/accept", "post"),
        ("/api/v1/me", "get"),
        ("/api/v1/users", "get"),
        ("/api/v1/users", "post"),
        ("/api/v1/users/{id}", "get"),
        ("/api/v1/users/{id}", "patch"),
        ("/api/v1/users/{id}", "delete"),
        ("/api/v1/collections", "get"),
        ("/api/v1/collections", "post"),
        ("/api/v1/collections/{name}", "get"),
        ("/api/v1/collections/{name}", "patch"),
        ("/api/v1/collections/{name}", "delete"),
        ("/api/v1/collections/{name}/records", "get"),
        ("/api/v1/collections/{name}/records", "post"),
        ("/api/v1/collections/{name}/records/{id}", "get"),
        ("/api/v1/collections/{name}/records/{id}", "patch"),
        ("/api/v1/collections/{name}/records/{id}", "delete"),
        ("/api/v1/audit", "get"),
    ];
    for (path, method) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from /openapi.json"
        );
    }
    // Every documented operation is routed: calling it never gives the router's 404/405.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "00000000-0000-0000-0000-000000000000")
                .replace("{name}", "nothing");
            let res = app
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    &concrete,
                    None,
                    None,
                )
                .await;
            assert_ne!(
                res.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            if res.status() == StatusCode::NOT_FOUND {
                let body: Value = res.json().await.unwrap();
                assert_ne!(
                    body["detail"], "no such route",
                    "{method} {path} is documented but not routed"
                );
            }
        }
    }
    assert_eq!(
        doc["paths"]["/api/v1/users"]["post"]["x-permission"],
        "users.manage"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problem_json() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/api/v1/nothing-here", app.address))
        .send()
        .await
        .unwrap();
    let body = problem(res, StatusCode::NOT_FOUND).await;
    assert_eq!(body["type"], "urn:strongroom:problem:not-found");
    let res = app
        .client
        .put(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    problem(res, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn malformed_json_is_a_400_problem_carrying_the_request_id() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(format!("{}/api/v1/auth/login", app.address))
        .header("content-type", "application/json")
        .body("{\"tenant\": ")
        .send()
        .await
        .unwrap();
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = problem(res, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["request_id"], request_id.as_str());
    // Wrong shape (missing field) is 422, wrong content type 415: client mistakes, never 5xx.
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            serde_json::json!({"tenant": "x"}),
        )
        .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let res = app
        .client
        .post(format!("{}/api/v1/auth/login", app.address))
        .body("x")
        .send()
        .await
        .unwrap();
    problem(res, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn ctl_net_4_every_response_carries_strict_security_headers() {
    let app = spawn_app().await;
    // A success, a client mistake and an unknown route alike.
    for (path, status) in [
        ("/healthz", StatusCode::OK),
        ("/api/v1/me", StatusCode::UNAUTHORIZED),
        ("/api/v1/no-such-route", StatusCode::NOT_FOUND),
    ] {
        let res = app.request(Method::GET, path, None, None).await;
        assert_eq!(res.status(), status, "{path}");
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }
}

#[tokio::test]
async fn ctl_ops_1_an_overdue_job_fails_readiness_naming_it() {
    use std::time::Duration;
    let app = spawn_app().await;
    let every = Duration::from_millis(500);
    strongroom::ops::every(
        app.state.store.clone(),
        &app.state.schedule,
        "test.healthy",
        every,
        || async { Ok("fine".to_owned()) },
    );
    strongroom::ops::every(
        app.state.store.clone(),
        &app.state.schedule,
        "test.stuck",
        every,
        || async {
            std::future::pending::<()>().await;
            Ok(String::new())
        },
    );
    let readyz = || async {
        let res = app
            .client
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .unwrap();
        (res.status(), res.text().await.unwrap())
    };
    // Within twice the interval nothing is overdue yet.
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(every * 3).await;
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("test.stuck"), "{body}");
    assert!(!body.contains("test.healthy"), "{body}");
    // The CLI lists what ran.
    let out = app.cli_ok(&["jobs", "--json"]).await;
    let runs: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let healthy = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["job"] == "test.healthy")
        .expect("the healthy job ran");
    assert_eq!(healthy["ok"], true);
    assert!(healthy["runs"].as_i64().unwrap() >= 1);
}

/// Runs `binary serve` on `dir` until it is ready, stops it, and returns
/// what it logged.
async fn serve_once(
    binary: &std::path::Path,
    dir: &std::path::Path,
    url: &str,
    address: std::net::SocketAddr,
    env: &[(&str, &str)],
) -> String {
    use std::time::{Duration, Instant};
    let log = dir.join(format!("start-{}.log", uuid::Uuid::new_v4().simple()));
    let mut child = std::process::Command::new(binary)
        .args(["serve", "--listen", &address.to_string()])
        .env("STRONGROOM_DATA_DIR", dir)
        .env("STRONGROOM_DATABASE_URL", url)
        .env("STRONGROOM_LOG_LEVEL", "info")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = crate::helpers::http_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("http://{address}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test]
async fn ctl_ops_3_a_changed_binary_or_configuration_is_recorded_at_start() {
    let dir = crate::helpers::temp_dir("install");
    let url = crate::helpers::fresh_database(&dir).await;
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_strongroom"));
    // The address is part of the configuration: the same one every time.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let first = serve_once(&binary, &dir, &url, address, &[]).await;
    assert!(first.contains("integrity at start"), "{first}");
    assert!(!first.contains("changed since the last start"), "{first}");
    // The same binary and configuration again: nothing to say.
    let same = serve_once(&binary, &dir, &url, address, &[]).await;
    assert!(!same.contains("changed since the last start"), "{same}");
    // Another configuration.
    let other = serve_once(
        &binary,
        &dir,
        &url,
        address,
        &[("STRONGROOM_KEY_CACHE_SECONDS", "7")],
    )
    .await;
    assert!(
        other.contains("the configuration changed since the last start"),
        "{other}"
    );
    assert!(!other.contains("the executable changed"), "{other}");
    // Another executable (one byte more).
    let copy = dir.join("strongroom-modified");
    std::fs::copy(&binary, &copy).unwrap();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)
        .unwrap()
        .write_all(b"\0")
        .unwrap();
    let changed = serve_once(
        &copy,
        &dir,
        &url,
        address,
        &[("STRONGROOM_KEY_CACHE_SECONDS", "7")],
    )
    .await;
    assert!(
        changed.contains("the executable changed since the last start"),
        "{changed}"
    );
    assert!(
        changed.contains("\"target\":\"security\""),
        "a security event: {changed}"
    );
    // verify-install shows this executable beside the last start (the copy).
    let out = crate::helpers::cli(&dir, &url)
        .args(["verify-install", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(shown["same"], false);
    assert_ne!(
        shown["now"]["binary_sha256"],
        shown["last_start"]["binary_sha256"]
    );
    assert_eq!(
        shown["last_start"]["binary_sha256"].as_str().unwrap().len(),
        64
    );
}
