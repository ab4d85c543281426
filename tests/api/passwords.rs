//! Passwords after the first (IAM-2), with a real SMTP server reading the
//! mails: a reset link used once, a request that answers alike whether or
//! not the account exists, an admin's reset to a temporary password only
//! the user sees and must change first, and the change itself.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{MailSink, PASSWORD, SunkMail, TestApp, spawn_app, spawn_app_mailing};

const NEW_PASSWORD: &str = "copper-lantern-meadow-57";
const THIRD_PASSWORD: &str = "granite-orchid-voyage-38";

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post(
        "/api/v1/auth/login",
        None,
        json!({"tenant": "acme", "email": email, "password": password}),
    )
    .await
}

/// A failed login delays the account's next attempt by a second (IAM-6).
async fn after_a_failure() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

async fn reset_request(app: &TestApp, tenant: &str, email: &str) -> (StatusCode, Value) {
    let res = app
        .post(
            "/api/v1/auth/password/reset-request",
            None,
            json!({"tenant": tenant, "email": email}),
        )
        .await;
    (res.status(), res.json().await.unwrap())
}

/// The temporary password in an admin reset's mail: the line of four
/// groups of five.
fn temporary_password(mail: &SunkMail) -> String {
    mail.text
        .as_deref()
        .unwrap()
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 23 && l.split('-').all(|g| g.len() == 5))
        .expect("the mail carries the temporary password")
        .to_owned()
}

#[tokio::test]
async fn ctl_iam_2_a_reset_link_is_mailed_used_once_and_ends_every_session() {
    let sink = MailSink::start().await;
    let app = spawn_app_mailing(&sink).await;
    let admin = app.admin_via(&sink, "acme").await;
    let anna = app
        .user_via(&sink, &admin, "anna@acme.test", "member")
        .await;

    let (status, body) = reset_request(&app, "acme", "anna@acme.test").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mail = sink.nth_to("anna@acme.test", 2).await;
    assert_eq!(mail.subject, "Reset your password for acme Ltd");
    let text = mail.text.clone().unwrap();
    assert!(
        text.contains("https://app.strongroom.test/password-reset#token=sr_pwr_"),
        "{text}"
    );
    let token = mail.token();

    // A weak password is refused and leaves the link usable.
    let res = app
        .post(
            "/api/v1/auth/password/reset",
            None,
            json!({"token": token, "password": "password123"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = app
        .post(
            "/api/v1/auth/password/reset",
            None,
            json!({"token": token, "password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // Used once.
    let res = app
        .post(
            "/api/v1/auth/password/reset",
            None,
            json!({"token": token, "password": THIRD_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Every session of anna's ended; the old password is gone.
    tokio::time::sleep(strongroom::identity::SESSION_CHECK_TTL).await;
    assert_eq!(
        app.get("/api/v1/me", &anna.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&app, "anna@acme.test", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    after_a_failure().await;
    assert_eq!(
        login(&app, "anna@acme.test", NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    let notice = sink.nth_to("anna@acme.test", 3).await;
    assert_eq!(notice.subject, "Your password for acme Ltd was changed");

    // A newer request ends the older link.
    reset_request(&app, "acme", "anna@acme.test").await;
    let older = sink.nth_to("anna@acme.test", 4).await.token();
    reset_request(&app, "acme", "anna@acme.test").await;
    let newer = sink.nth_to("anna@acme.test", 5).await.token();
    let res = app
        .post(
            "/api/v1/auth/password/reset",
            None,
            json!({"token": older, "password": THIRD_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .post(
            "/api/v1/auth/password/reset",
            None,
            json!({"token": newer, "password": THIRD_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    // Audited without the token or the hash.
    let events = app.audit(&admin).await;
    let requested: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "auth.password.reset_request")
        .collect();
    assert_eq!(requested.len(), 3);
    assert_eq!(requested[0]["target"]["id"], anna.user_id.as_str());
    let trail = serde_json::to_string(&events).unwrap();
    assert!(!trail.contains(&token) && !trail.contains("$argon2"));
}

#[tokio::test]
async fn ctl_iam_2_a_reset_request_answers_alike_and_at_once_for_every_account() {
    let sink = MailSink::start().await;
    let app = spawn_app_mailing(&sink).await;
    let admin = app.admin_via(&sink, "acme").await;
    let anna = app
        .user_via(&sink, &admin, "anna@acme.test", "member")
        .await;
    let res = app
        .patch(
            &format!("/api/v1/users/{}", anna.user_id),
            &admin.access_token,
            json!({"status": "disabled"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let known = reset_request(&app, "acme", "admin@acme.test").await;
    for (tenant, email) in [
        ("acme", "nobody@acme.test"),
        ("no-such-tenant", "admin@acme.test"),
        ("acme", "anna@acme.test"),
        ("acme", "not an address"),
    ] {
        assert_eq!(
            reset_request(&app, tenant, email).await,
            known,
            "{tenant}/{email}"
        );
    }
    // Only the active account got a link.
    sink.nth_to("admin@acme.test", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.to("anna@acme.test").len(), 1, "only the invitation");
    assert_eq!(sink.received().len(), 3);

    // The answer does not wait for the reset's write: with the tenant's
    // writes held back, a known account still answers at once.
    let mut raw = app.raw().await;
    if crate::helpers::is_postgres() {
        sqlx::query("BEGIN").execute(&mut raw).await.unwrap();
        sqlx::query(&format!(
            "SELECT 1 FROM tenant_sequences WHERE tenant_id = '{}' FOR UPDATE",
            admin.tenant_id
        ))
        .execute(&mut raw)
        .await
        .unwrap();
    } else {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut raw)
            .await
            .unwrap();
    }
    let started = Instant::now();
    let held = reset_request(&app, "acme", "admin@acme.test").await;
    let took = started.elapsed();
    assert_eq!(held, known);
    assert!(
        took < Duration::from_millis(1500),
        "the request waited {took:?} for the held write"
    );
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(took)).await;
    sqlx::query("COMMIT").execute(&mut raw).await.unwrap();
    sink.nth_to("admin@acme.test", 3).await;

    // Without a relay, no reset can reach anyone: that is said plainly.
    let quiet = spawn_app().await;
    quiet.admin("acme").await;
    let (status, body) = reset_request(&quiet, "acme", "admin@acme.test").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["type"], "urn:strongroom:problem:mail-off");
}

#[tokio::test]
async fn ctl_iam_2_an_admin_reset_mails_a_temporary_password_that_must_be_changed_first() {
    let sink = MailSink::start().await;
    let app = spawn_app_mailing(&sink).await;
    let admin = app.admin_via(&sink, "acme").await;
    let anna = app
        .user_via(&sink, &admin, "anna@acme.test", "member")
        .await;
    let bob = app.user_via(&sink, &admin, "bob@acme.test", "member").await;
    // Only users.manage may reset.
    let res = app
        .post(
            &format!("/api/v1/users/{}/reset-password", anna.user_id),
            Some(&bob.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let res = app
        .post(
            &format!("/api/v1/users/{}/reset-password", anna.user_id),
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let shown = res.text().await.unwrap();
    let mail = sink.nth_to("anna@acme.test", 2).await;
    assert_eq!(mail.subject, "Your temporary password for acme Ltd");
    let temporary = temporary_password(&mail);
    assert!(
        !shown.contains(&temporary),
        "the admin never sees it: {shown}"
    );
    // Every session of anna's ended.
    tokio::time::sleep(strongroom::identity::SESSION_CHECK_TTL).await;
    assert_eq!(
        app.get("/api/v1/me", &anna.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&app, "anna@acme.test", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    after_a_failure().await;
    let res = login(&app, "anna@acme.test", &temporary).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(tokens["password_change_required"], true);
    let access = tokens["access_token"].as_str().unwrap();
    // Until the change, nothing else works.
    let res = app.get("/api/v1/collections", access).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("password-change-required")
    );
    assert_eq!(app.get("/api/v1/me", access).await.status(), StatusCode::OK);
    // The temporary password cannot be kept.
    let res = app
        .post(
            "/api/v1/auth/password/change",
            Some(access),
            json!({"current_password": temporary, "new_password": temporary}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = app
        .post(
            "/api/v1/auth/password/change",
            Some(access),
            json!({"current_password": temporary, "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(strongroom::identity::SESSION_CHECK_TTL).await;
    assert_eq!(
        app.get("/api/v1/collections", access).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        sink.nth_to("anna@acme.test", 3).await.subject,
        "Your password for acme Ltd was changed"
    );

    // An invited user has no password to reset; without a relay nothing
    // could reach the user alone.
    let res = app
        .post(
            "/api/v1/users",
            Some(&admin.access_token),
            json!({"email": "cyril@acme.test", "role": "viewer"}),
        )
        .await;
    let cyril: Value = res.json().await.unwrap();
    let res = app
        .post(
            &format!(
                "/api/v1/users/{}/reset-password",
                cyril["id"].as_str().unwrap()
            ),
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let quiet = spawn_app().await;
    let quiet_admin = quiet.admin("acme").await;
    let res = quiet
        .post(
            &format!("/api/v1/users/{}/reset-password", quiet_admin.user_id),
            Some(&quiet_admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);

    let events = app.audit(&admin).await;
    let reset = events
        .iter()
        .find(|e| e["action"] == "user.password.reset")
        .expect("the admin's reset is audited");
    assert_eq!(reset["actor"]["id"], admin.user_id.as_str());
    assert_eq!(reset["target"]["id"], anna.user_id.as_str());
    let trail = serde_json::to_string(&events).unwrap();
    assert!(!trail.contains(&temporary) && !trail.contains("$argon2"));
}

#[tokio::test]
async fn ctl_iam_2_a_password_change_needs_the_current_one_and_ends_the_other_sessions() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let other = login(&app, "admin@acme.test", PASSWORD).await;
    let other: Value = other.json().await.unwrap();
    let res = app
        .post(
            "/api/v1/auth/password/change",
            Some(&admin.access_token),
            json!({"current_password": "not-the-password", "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .post(
            "/api/v1/auth/password/change",
            Some(&admin.access_token),
            json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = app
        .post(
            "/api/v1/auth/password/change",
            Some(&admin.access_token),
            json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(strongroom::identity::SESSION_CHECK_TTL).await;
    // This session goes on; the other one ended.
    assert_eq!(
        app.get("/api/v1/me", &admin.access_token).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/me", other["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&app, "admin@acme.test", NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
}
