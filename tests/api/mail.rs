//! Mail (IAM-2's transport): a real SMTP server (aiosmtpd) receives what
//! the outbox sends. A mail goes out iff its change committed, in the
//! tenant's language, with the token only in the mail; a relay that is
//! down or refuses is retried or given up, visibly to operators, and the
//! outbox never keeps an addressee or a token in the clear.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{MailSink, TestApp, spawn_app_mailing, spawn_app_with};

/// The outbox as the database holds it: (template, state, attempts,
/// last_error, sealed bytes).
async fn outbox(app: &TestApp) -> Vec<(String, String, i64, Option<String>, Option<Vec<u8>>)> {
    let mut conn = app.raw().await;
    sqlx::query(
        "SELECT template, state, CAST(attempts AS BIGINT), last_error, sealed FROM mail_outbox \
         ORDER BY created_at",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
    .collect()
}

/// Waits (up to 20 s) until `done` holds for the outbox.
async fn outbox_until(
    app: &TestApp,
    done: impl Fn(&[(String, String, i64, Option<String>, Option<Vec<u8>>)]) -> bool,
) -> Vec<(String, String, i64, Option<String>, Option<Vec<u8>>)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = outbox(app).await;
        if done(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "outbox stayed {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ctl_iam_2_invitations_are_mailed_in_the_tenants_language_and_never_shown() {
    let sink = MailSink::start().await;
    let app = spawn_app_mailing(&sink).await;
    // The first admin's invitation came by mail, and its link works.
    let admin = app.admin_via(&sink, "acme").await;
    let first = sink.first_to("admin@acme.test").await;
    assert_eq!(first.subject, "You are invited to acme Ltd");
    assert_eq!(first.from, "Strongroom Tests <noreply@strongroom.test>");
    assert_eq!(first.to, "admin@acme.test");

    let res = app
        .post(
            "/api/v1/users",
            Some(&admin.access_token),
            json!({"email": "anna@acme.test", "role": "member"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert!(
        created.get("invitation_token").is_none(),
        "the inviter never sees a mailed token: {created}"
    );
    assert_eq!(created["invitation_mailed"], true);
    let mail = sink.first_to("anna@acme.test").await;
    let text = mail.text.clone().unwrap();
    let html = mail.html.clone().unwrap();
    assert!(
        text.contains("https://app.strongroom.test/invitation#token=sr_inv_"),
        "{text}"
    );
    assert!(text.contains("anna@acme.test"), "{text}");
    assert!(
        html.contains("<a href=\"https://app.strongroom.test/invitation#token=sr_inv_"),
        "{html}"
    );
    assert!(html.contains("lang=\"en\""), "{html}");
    app.accept(&mail.token(), "anna@acme.test", &admin.tenant_id)
        .await;

    // A tenant that writes Czech gets Czech mail.
    let res = app
        .patch(
            "/api/v1/tenant/settings",
            &admin.access_token,
            json!({"language": "cs"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["language"], "cs");
    let res = app
        .patch(
            "/api/v1/tenant/settings",
            &admin.access_token,
            json!({"language": "xx"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("cs, en"),
        "{problem}"
    );
    let petr = app
        .user_via(&sink, &admin, "petr@acme.test", "viewer")
        .await;
    let czech = sink.first_to(&petr.email).await;
    assert_eq!(czech.subject, "Pozvánka do acme Ltd");
    assert!(czech.text.unwrap().contains("Dobrý den"));
    assert!(czech.html.unwrap().contains("lang=\"cs\""));

    // A change that fails sends nothing: the invitation of a taken address
    // is refused, and no second mail reaches anna.
    let res = app
        .post(
            "/api/v1/users",
            Some(&admin.access_token),
            json!({"email": "anna@acme.test", "role": "admin"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.to("anna@acme.test").len(), 1);

    // What was sent is gone from the outbox: only that it was sent stays.
    let rows = outbox_until(&app, |rows| rows.iter().all(|r| r.1 == "sent")).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.0 == "invitation" && r.4.is_none()));
}

#[tokio::test]
async fn ctl_iam_2_a_relay_that_is_down_defers_mail_sealed_and_operators_see_why() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(|config| {
        config.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
    })
    .await;
    let operator = app.ops_token().await;
    let operator = operator.as_str();
    strongroom::cli::start_mail_delivery(&app.state);
    let created = app.create_tenant("acme").await;
    assert!(created.invitation_mailed && created.invitation_token.is_none());

    let rows = outbox_until(&app, |rows| rows.iter().any(|r| r.2 >= 1)).await;
    let (template, state, _, error, sealed) = &rows[0];
    assert_eq!(
        (template.as_str(), state.as_str()),
        ("invitation", "pending")
    );
    assert_eq!(error.as_deref(), Some("connection failed"));
    // Waiting, the mail is ciphertext: no address, no token, no subject.
    let sealed = sealed.clone().expect("a waiting mail keeps its content");
    for clear in [&b"admin@acme.test"[..], b"sr_inv_", b"invited", b"acme Ltd"] {
        assert!(
            !sealed.windows(clear.len()).any(|w| w == clear),
            "{} in the clear",
            String::from_utf8_lossy(clear)
        );
    }

    let res = app
        .client
        .get(format!("{}/api/v1/ops/mail", app.address))
        .bearer_auth(operator)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.text().await.unwrap();
    assert!(!body.contains("admin@acme.test"), "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["configured"], true);
    assert_eq!(status["pending"], 1);
    assert!(status["oldest_pending_seconds"].as_i64().unwrap() >= 0);
    assert_eq!(status["recent_problems"][0]["template"], "invitation");
    assert_eq!(status["recent_problems"][0]["error"], "connection failed");
    let res = app
        .client
        .get(format!("{}/api/v1/ops/mail", app.address))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn ctl_iam_2_mail_authenticates_to_the_relay_and_a_refusal_is_given_up() {
    let sink = MailSink::with_auth("mailer", "relay-secret").await;
    let url = sink.url();
    let app = spawn_app_with(|config| {
        config.smtp_url = Some(url.clone());
        config.smtp_username = Some("mailer".to_owned());
        config.smtp_password = Some("relay-secret".to_owned().into());
    })
    .await;
    strongroom::cli::start_mail_delivery(&app.state);
    app.admin_via(&sink, "acme").await;

    // The wrong password: the relay refuses (535), and the mail is given up
    // at once rather than retried for a day.
    let refused = spawn_app_with(|config| {
        config.smtp_url = Some(url);
        config.smtp_username = Some("mailer".to_owned());
        config.smtp_password = Some("not-the-secret".to_owned().into());
    })
    .await;
    strongroom::cli::start_mail_delivery(&refused.state);
    refused.create_tenant("acme").await;
    let rows = outbox_until(&refused, |rows| rows.iter().all(|r| r.1 == "failed")).await;
    assert_eq!(rows[0].2, 1, "one attempt: {rows:?}");
    assert!(
        rows[0].3.as_deref().unwrap().starts_with("refused (535"),
        "{rows:?}"
    );
    assert!(rows[0].4.is_none(), "a given-up mail keeps no content");
    assert!(sink.to("admin@acme.test").len() == 1);
}

#[tokio::test]
async fn ctl_iam_2_nodes_delivering_at_once_send_each_mail_once() {
    let sink = MailSink::start().await;
    let url = sink.url();
    // No delivery job: the test runs deliveries itself, on both nodes at
    // once, where the job's lease would keep them apart.
    let app = spawn_app_with(|config| config.smtp_url = Some(url)).await;
    let other = app.second_node().await;
    let created = app.create_tenant("acme").await;
    let scopes = app.state.store.tenant_scopes().await.unwrap();
    let deliver = |node: &TestApp| {
        let state = node.state.clone();
        let scopes = scopes.clone();
        async move {
            strongroom::mail::deliver(&state.mailer, &state.store, &state.vault, &scopes, true)
                .await
                .unwrap()
        }
    };
    join_all((0..4).map(|i| deliver(if i % 2 == 0 { &app } else { &other }))).await;
    let mail = sink.first_to(&created.admin_email).await;
    let admin = app
        .accept(&mail.token(), &created.admin_email, &created.tenant_id)
        .await;
    for round in 0..10 {
        let email = format!("user{round}@acme.test");
        let res = app
            .post(
                "/api/v1/users",
                Some(&admin.access_token),
                json!({"email": email, "role": "member"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        join_all((0..4).map(|i| deliver(if i % 2 == 0 { &app } else { &other }))).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = sink.received();
    assert_eq!(received.len(), 11, "each mail once: {received:?}");
    for round in 0..10 {
        assert_eq!(sink.to(&format!("user{round}@acme.test")).len(), 1);
    }
}
