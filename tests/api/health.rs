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
async fn responses_carry_strict_security_headers() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    let h = res.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
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
