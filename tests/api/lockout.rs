//! IAM-6: failed logins slow the next attempt and then lock the account
//! for a while — for accounts and tenants that do not exist exactly as for
//! those that do — and a real user on a device they used before still gets
//! in. Unlocked by time, by an admin, or by a completed password reset.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{MailSink, PASSWORD, TestApp, spawn_app_mailing_with, spawn_app_with};

/// The password-attempt limiter (NET-3) out of the way: IAM-6's own
/// delays and locks are under test.
fn unlimited(c: &mut strongroom::config::Config) {
    c.login_attempts_per_minute_per_ip = 1_000_000;
    c.login_attempts_per_minute_per_account = 1_000_000;
}

async fn attempt(
    app: &TestApp,
    tenant: &str,
    email: &str,
    password: &str,
) -> (StatusCode, Value, Option<u64>) {
    attempt_from(app, tenant, email, password, None).await
}

async fn attempt_from(
    app: &TestApp,
    tenant: &str,
    email: &str,
    password: &str,
    device: Option<&str>,
) -> (StatusCode, Value, Option<u64>) {
    let mut body = json!({"tenant": tenant, "email": email, "password": password});
    if let Some(device) = device {
        body["device_token"] = json!(device);
    }
    // A client that lets idle connections go before the server does: the
    // waits here reach 10 s, the server's limit for a kept-alive
    // connection's next headers, and a request sent on a connection the
    // server is just closing fails in transport.
    static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        crate::helpers::install_tls_provider();
        reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    });
    let res = CLIENT
        .post(format!("{}/api/v1/auth/login", app.address))
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = res.status();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body: Value = res.json().await.unwrap();
    if let Some(object) = body.as_object_mut() {
        object.remove("request_id");
    }
    (status, body, retry)
}

/// What an attacker sees for an account: status, problem type and the
/// wait it is told, for each of a series of attempts.
async fn what_an_attacker_sees(
    app: &TestApp,
    tenant: &str,
    email: &str,
) -> Vec<(StatusCode, Value, Option<u64>)> {
    let mut seen = Vec::new();
    // A failure, an attempt at once (too soon), the wait, a failure, at
    // once again (now the wait is 3 s).
    seen.push(attempt(app, tenant, email, "wrong-guess-1").await);
    seen.push(attempt(app, tenant, email, "wrong-guess-2").await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    seen.push(attempt(app, tenant, email, "wrong-guess-3").await);
    seen.push(attempt(app, tenant, email, "wrong-guess-4").await);
    seen
}

/// Ten wrong guesses for `email` at acme, all at once.
async fn burst(app: &TestApp, email: &str) -> Vec<StatusCode> {
    join_all(
        (0..10).map(|i| async move { attempt(app, "acme", email, &format!("guess-{i}")).await.0 }),
    )
    .await
}

/// Guesses for `email` until the account is locked: bursts of ten at
/// once, each guess that gets past the wait counted. A loaded machine may
/// answer the first guess of a burst before the rest arrive, and then the
/// rest are told to wait; the next burst comes when told.
async fn lock(app: &TestApp, email: &str) -> Vec<Vec<StatusCode>> {
    let mut bursts = Vec::new();
    for _ in 0..12 {
        let statuses = burst(app, email).await;
        assert!(
            statuses
                .iter()
                .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
            "{statuses:?}"
        );
        bursts.push(statuses);
        let (status, body, retry) = attempt(app, "acme", email, "probe-guess").await;
        if body["type"] == "urn:strongroom:problem:account-locked" {
            return bursts;
        }
        let wait = if status == StatusCode::TOO_MANY_REQUESTS {
            retry.unwrap_or(1)
        } else {
            10
        };
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    panic!("{email} was never locked: {bursts:?}");
}

/// An attempt and how long its answer took.
async fn timed(
    app: &TestApp,
    email: &str,
    password: &str,
) -> ((StatusCode, Value, Option<u64>), Duration) {
    let started = Instant::now();
    let seen = attempt(app, "acme", email, password).await;
    (seen, started.elapsed())
}

#[tokio::test]
async fn ctl_iam_6_failures_slow_the_next_attempt_alike_for_accounts_that_do_not_exist() {
    let app = spawn_app_with(unlimited).await;
    app.admin("acme").await;
    let known = what_an_attacker_sees(&app, "acme", "admin@acme.test").await;
    assert_eq!(known[0].0, StatusCode::UNAUTHORIZED);
    assert_eq!(known[1].0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(known[1].1["type"], "urn:strongroom:problem:login-throttled");
    assert_eq!(known[1].2, Some(1));
    assert_eq!(known[2].0, StatusCode::UNAUTHORIZED);
    assert_eq!(known[3].0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(known[3].2, Some(3));
    for (tenant, email) in [("acme", "nobody@acme.test"), ("nowhere", "admin@acme.test")] {
        let unknown = what_an_attacker_sees(&app, tenant, email).await;
        assert_eq!(unknown, known, "{tenant}/{email} answers differently");
    }
    // The right password, too soon after a failure, waits like a wrong one.
    let (status, _, retry) = attempt(&app, "acme", "admin@acme.test", PASSWORD).await;
    assert_eq!(
        (status, retry.is_some()),
        (StatusCode::TOO_MANY_REQUESTS, true)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _, _) = attempt(&app, "acme", "admin@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    // A success forgets the failures: the next mistake waits 1 s again.
    attempt(&app, "acme", "admin@acme.test", "wrong-again").await;
    let (status, _, retry) = attempt(&app, "acme", "admin@acme.test", "wrong-again").await;
    assert_eq!((status, retry), (StatusCode::TOO_MANY_REQUESTS, Some(1)));
}

#[tokio::test]
async fn ctl_iam_6_a_burst_locks_the_account_but_not_its_user_on_a_known_device() {
    let sink = MailSink::start().await;
    let app = spawn_app_mailing_with(&sink, unlimited).await;
    let admin = app.admin_via(&sink, "acme").await;
    let anna = app
        .user_via(&sink, &admin, "anna@acme.test", "member")
        .await;
    // Anna's laptop: a login there hands it a device token.
    let (status, tokens, _) = attempt(&app, "acme", "anna@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let laptop = tokens["device_token"]
        .as_str()
        .expect("a new device gets a token")
        .to_owned();
    assert!(laptop.starts_with("sr_dev_"));

    // Guesses at once, for anna and for an address nobody has, until each
    // is locked (the tenth counted failure locks).
    let (real, none) = (
        lock(&app, "anna@acme.test").await,
        lock(&app, "ghost@acme.test").await,
    );
    assert!(!real.is_empty() && !none.is_empty());
    let ((locked, locked_took), (ghost, ghost_took)) = (
        timed(&app, "anna@acme.test", PASSWORD).await,
        timed(&app, "ghost@acme.test", PASSWORD).await,
    );
    // Locked for 15 minutes, said the same way for both, even to anna's
    // right password from a device never seen.
    assert_eq!(locked.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(locked.1["type"], "urn:strongroom:problem:account-locked");
    assert!((890..=900).contains(&locked.2.unwrap()), "{:?}", locked.2);
    assert_eq!((locked.0, &locked.1), (ghost.0, &ghost.1));
    assert!(ghost.2.unwrap().abs_diff(locked.2.unwrap()) <= 2);
    // Refused before any password is checked, alike in time too.
    assert!(
        locked_took < Duration::from_millis(500) && ghost_took < Duration::from_millis(500),
        "{locked_took:?} / {ghost_took:?}"
    );

    // On her laptop anna gets in, while the attack goes on elsewhere.
    let (status, tokens, _) =
        attempt_from(&app, "acme", "anna@acme.test", PASSWORD, Some(&laptop)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(
        tokens.get("device_token").is_none(),
        "a known device keeps its token"
    );
    // A stolen device token does not open the door to guessing either: it
    // is counted on its own.
    attempt_from(&app, "acme", "anna@acme.test", "guess-x", Some(&laptop)).await;
    let (status, _, _) =
        attempt_from(&app, "acme", "anna@acme.test", "guess-y", Some(&laptop)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // The lock is a security event in the tenant's trail.
    let locks: Vec<Value> = app
        .audit(&admin)
        .await
        .into_iter()
        .filter(|e| e["action"] == "auth.account_locked")
        .collect();
    assert_eq!(locks.len(), 2, "anna's and the ghost's: {locks:?}");
    assert!(
        locks
            .iter()
            .any(|e| e["target"]["id"] == anna.user_id.as_str())
    );

    // An admin lifts it.
    let res = app
        .post(
            &format!("/api/v1/users/{}/unlock", anna.user_id),
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let unlocked: Value = res.json().await.unwrap();
    assert!(unlocked["was_locked_until"].is_string(), "{unlocked}");
    let (status, _, _) = attempt(&app, "acme", "anna@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        app.audit(&admin)
            .await
            .iter()
            .any(|e| e["action"] == "user.unlock" && e["target"]["id"] == anna.user_id.as_str())
    );
}

#[tokio::test]
async fn ctl_iam_6_a_completed_password_reset_lifts_the_lock() {
    let sink = MailSink::start().await;
    let app = spawn_app_mailing_with(&sink, unlimited).await;
    app.admin_via(&sink, "acme").await;
    lock(&app, "admin@acme.test").await;
    let (status, body, _) = attempt(&app, "acme", "admin@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["type"], "urn:strongroom:problem:account-locked");
    let res = app
        .post(
            "/api/v1/auth/password/reset-request",
            None,
            json!({"tenant": "acme", "email": "admin@acme.test"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let token = sink.nth_to("admin@acme.test", 2).await.token();
    let res = app
        .post(
            "/api/v1/auth/password/reset",
            None,
            json!({"token": token, "password": "fresh-start-meadow-81"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (status, _, _) = attempt(&app, "acme", "admin@acme.test", "fresh-start-meadow-81").await;
    assert_eq!(status, StatusCode::OK);
}
