//! Check-then-act on shared state holds under concurrent requests (#15's
//! defects): one refresh token, one invitation, the last admin. One app
//! server runs its writes one after another; two app servers on one
//! PostgreSQL run them in transactions side by side. So each test races
//! its requests over two nodes of one instance, many times.

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, spawn_app_with};

/// An app whose password-attempt limits let the racers through: the races,
/// not the limits, are under test.
async fn spawn_app() -> crate::helpers::TestApp {
    spawn_app_with(|c| {
        c.login_attempts_per_minute_per_ip = 1_000_000;
        c.login_attempts_per_minute_per_account = 1_000_000;
    })
    .await
}

const RACERS: usize = 8;
const ROUNDS: usize = 25;

#[tokio::test]
async fn ctl_iam_5_racing_refreshes_of_one_token_give_one_pair_and_revoke_the_session() {
    let app = spawn_app().await;
    let other = app.second_node().await;
    let nodes = [&app, &other];
    let admin = app.admin("acme").await;
    for round in 0..ROUNDS {
        let res = app
            .post(
                "/api/v1/auth/login",
                None,
                json!({"tenant": "acme", "email": admin.email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let pair: Value = res.json().await.unwrap();
        let refresh = pair["refresh_token"].as_str().unwrap().to_owned();
        let answers = join_all((0..RACERS).map(|i| {
            nodes[i % 2].post(
                "/api/v1/auth/refresh",
                None,
                json!({"refresh_token": refresh}),
            )
        }))
        .await;
        let mut winners = Vec::new();
        for res in answers {
            match res.status() {
                StatusCode::OK => winners.push(res.json::<Value>().await.unwrap()),
                StatusCode::UNAUTHORIZED => {}
                other => panic!("round {round}: a refresh answered {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} refreshes of one token won",
            winners.len()
        );
        // The others were reuse: the session is revoked, the winner's pair with it.
        let next = winners[0]["refresh_token"].as_str().unwrap();
        let res = app
            .post("/api/v1/auth/refresh", None, json!({"refresh_token": next}))
            .await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "round {round}: reuse went unnoticed"
        );
        let access = winners[0]["access_token"].as_str().unwrap();
        assert_eq!(
            app.get("/api/v1/me", access).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn ctl_iam_2_racing_acceptances_of_one_invitation_let_one_in() {
    let app = spawn_app().await;
    let other = app.second_node().await;
    let nodes = [&app, &other];
    let admin = app.admin("acme").await;
    for round in 0..ROUNDS {
        let email = format!("racer{round}@acme.test");
        let res = app
            .post(
                "/api/v1/users",
                Some(&admin.access_token),
                json!({"email": email, "role": "member"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let token = res.json::<Value>().await.unwrap()["invitation_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let answers = join_all((0..RACERS).map(|i| {
            nodes[i % 2].post(
                "/api/v1/auth/invitations/accept",
                None,
                json!({"token": token, "password": PASSWORD}),
            )
        }))
        .await;
        let ok = answers
            .iter()
            .filter(|r| r.status() == StatusCode::OK)
            .count();
        assert_eq!(ok, 1, "round {round}: one invitation let {ok} sessions in");
        for res in &answers {
            assert!(
                matches!(res.status(), StatusCode::OK | StatusCode::UNAUTHORIZED),
                "round {round}: {}",
                res.status()
            );
        }
    }
}

#[tokio::test]
async fn ctl_acc_1_two_admins_demoting_each_other_at_once_leave_one_admin() {
    let app = spawn_app().await;
    let other = app.second_node().await;
    for round in 0..ROUNDS {
        // A tenant with exactly two admins; each demotes the other at once,
        // through a node of its own.
        let first = app.admin(&format!("pair{round}")).await;
        let second = app
            .user(&first, &format!("second@pair{round}.test"), "admin")
            .await;
        let (to_second, to_first) = (
            format!("/api/v1/users/{}", second.user_id),
            format!("/api/v1/users/{}", first.user_id),
        );
        let (a, b) = tokio::join!(
            app.patch(&to_second, &first.access_token, json!({"role": "member"})),
            other.patch(&to_first, &second.access_token, json!({"role": "member"})),
        );
        let statuses = [a.status(), b.status()];
        let admins = app
            .count(&format!(
                "SELECT COUNT(*) FROM users WHERE tenant_id = '{}' AND role = 'admin' \
                 AND status = 'active'",
                first.tenant_id
            ))
            .await;
        assert_eq!(
            admins, 1,
            "round {round}: {statuses:?} left {admins} admins"
        );
        assert!(
            // The loser is refused: the last admin (409), or its session
            // already ended with its role (401), or its role gone (403).
            statuses.contains(&StatusCode::OK)
                && (statuses.contains(&StatusCode::CONFLICT)
                    || statuses.contains(&StatusCode::UNAUTHORIZED)
                    || statuses.contains(&StatusCode::FORBIDDEN)),
            "round {round}: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn ctl_iam_2_a_cancelled_invitation_cannot_be_accepted() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let res = app
        .post(
            "/api/v1/users",
            Some(&admin.access_token),
            json!({"email": "later@acme.test", "role": "admin"}),
        )
        .await;
    let invited: Value = res.json().await.unwrap();
    let token = invited["invitation_token"].as_str().unwrap().to_owned();
    let id = invited["id"].as_str().unwrap().to_owned();
    // Cancelled: the admin disables the invited user.
    let res = app
        .patch(
            &format!("/api/v1/users/{id}"),
            &admin.access_token,
            json!({"status": "disabled"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post(
            "/api/v1/auth/invitations/accept",
            None,
            json!({"token": token, "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "a cancelled invitation let its user in"
    );
    let user: Value = app
        .get(&format!("/api/v1/users/{id}"), &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["status"], "disabled", "{user}");
    assert_eq!(user["role"], "admin");
}

#[tokio::test]
async fn ctl_iam_2_racing_resets_with_one_link_set_one_password() {
    let sink = crate::helpers::MailSink::start().await;
    let app = crate::helpers::spawn_app_mailing_with(&sink, |c| {
        c.login_attempts_per_minute_per_ip = 1_000_000;
        c.login_attempts_per_minute_per_account = 1_000_000;
        // The losers' passwords are tried below, one after another.
        c.login_lockout = false;
    })
    .await;
    let other = app.second_node().await;
    let nodes = [&app, &other];
    app.admin_via(&sink, "acme").await;
    for round in 0..ROUNDS / 5 {
        let res = app
            .post(
                "/api/v1/auth/password/reset-request",
                None,
                json!({"tenant": "acme", "email": "admin@acme.test"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let token = sink
            .nth_about("admin@acme.test", "Reset your password", round + 1)
            .await
            .token();
        let passwords: Vec<String> = (0..RACERS)
            .map(|i| format!("racing-reset-{round}-{i}-lantern"))
            .collect();
        let statuses: Vec<StatusCode> = join_all(passwords.iter().enumerate().map(|(i, p)| {
            nodes[i % 2].post(
                "/api/v1/auth/password/reset",
                None,
                json!({"token": token, "password": p}),
            )
        }))
        .await
        .iter()
        .map(|r| r.status())
        .collect();
        let won = statuses
            .iter()
            .filter(|s| **s == StatusCode::NO_CONTENT)
            .count();
        assert_eq!(won, 1, "round {round}: {statuses:?}");
        // Exactly the winner's password works.
        let mut working = 0;
        for password in &passwords {
            let res = app
                .post(
                    "/api/v1/auth/login",
                    None,
                    json!({"tenant": "acme", "email": "admin@acme.test", "password": password}),
                )
                .await;
            working += usize::from(res.status() == StatusCode::OK);
        }
        assert_eq!(working, 1, "round {round}");
    }
}

#[tokio::test]
async fn ctl_iam_6_racing_guesses_over_two_nodes_all_count_and_lock() {
    let app = spawn_app().await;
    let other = app.second_node().await;
    let nodes = [&app, &other];
    app.admin("acme").await;
    let statuses: Vec<StatusCode> = join_all((0..10).map(|i| {
        nodes[i % 2].post(
            "/api/v1/auth/login",
            None,
            json!({"tenant": "acme", "email": "admin@acme.test", "password": format!("guess-{i}")}),
        )
    }))
    .await
    .iter()
    .map(|r| r.status())
    .collect();
    let counted = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    // Every guess that was checked counted, on whichever node: ten make a
    // lock, fewer (some refused as too soon) the wait of that many.
    for node in nodes {
        let res = node
            .post(
                "/api/v1/auth/login",
                None,
                json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
        let problem: Value = res.json().await.unwrap();
        let kind = if counted == 10 {
            "urn:strongroom:problem:account-locked"
        } else {
            "urn:strongroom:problem:login-throttled"
        };
        assert_eq!(problem["type"], kind, "{counted} counted: {statuses:?}");
    }
    let failures = app
        .count("SELECT COALESCE(MAX(failures), 0) FROM login_failures")
        .await;
    assert_eq!(failures, counted as i64, "{statuses:?}");
}

#[tokio::test]
async fn ctl_iam_3_racing_codes_for_one_second_step_open_one_session() {
    let app = spawn_app().await;
    let other = app.second_node().await;
    let nodes = [&app, &other];
    let admin = app.admin("acme").await;
    let (secret, step, codes) = crate::mfa::enrol_totp(&app, &admin).await;
    for (round, code) in codes.iter().take(5).enumerate() {
        let res = app
            .post(
                "/api/v1/auth/login",
                None,
                json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}),
            )
            .await;
        let token = res.json::<Value>().await.unwrap()["mfa_token"]
            .as_str()
            .unwrap()
            .to_owned();
        // Each round a code not used yet: a recovery code, tried by all.
        let statuses: Vec<StatusCode> = join_all((0..RACERS).map(|i| {
            nodes[i % 2].post(
                "/api/v1/auth/mfa/verify",
                None,
                json!({"mfa_token": token, "method": "recovery", "code": code}),
            )
        }))
        .await
        .iter()
        .map(|r| r.status())
        .collect();
        let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        assert_eq!(won, 1, "round {round}: {statuses:?}");
    }
    // And one TOTP step, raced over two second steps, logs in once.
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let res = app
            .post(
                "/api/v1/auth/login",
                None,
                json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}),
            )
            .await;
        let body: Value = res.json().await.unwrap();
        tokens.push(body["mfa_token"].as_str().unwrap().to_owned());
    }
    let code = strongroom::identity::totp::code(&secret, step + 1);
    let statuses: Vec<StatusCode> = join_all(tokens.iter().enumerate().map(|(i, token)| {
        nodes[i % 2].post(
            "/api/v1/auth/mfa/verify",
            None,
            json!({"mfa_token": token, "method": "totp", "code": code}),
        )
    }))
    .await
    .iter()
    .map(|r| r.status())
    .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn ctl_iam_3_racing_uses_of_one_passkey_assertion_open_one_session() {
    let app = crate::helpers::spawn_app_for_passkeys().await;
    let other = app.second_node().await;
    let nodes = [&app, &other];
    let admin = app.admin("acme").await;
    let mut key = crate::helpers::Authenticator::start();
    crate::helpers::register_passkey(&app, &admin, &mut key).await;
    for round in 0..ROUNDS {
        let ticket: Value = app
            .post(
                "/api/v1/auth/passkey/start",
                None,
                json!({"tenant": "acme"}),
            )
            .await
            .json()
            .await
            .unwrap();
        let assertion = key.get(&ticket["passkey"], true).await;
        // One ticket and one signature, presented by all at once.
        let statuses: Vec<StatusCode> = join_all((0..RACERS).map(|i| {
            nodes[i % 2].post(
                "/api/v1/auth/passkey/login",
                None,
                json!({"ticket": ticket["ticket"], "credential": assertion}),
            )
        }))
        .await
        .iter()
        .map(|r| r.status())
        .collect();
        let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        assert_eq!(won, 1, "round {round}: {statuses:?}");
        assert!(
            statuses
                .iter()
                .all(|s| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED),
            "round {round}: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn ctl_iam_3_racing_step_ups_with_one_code_pass_once() {
    let app = spawn_app().await;
    let other = app.second_node().await;
    let nodes = [&app, &other];
    let admin = app.admin("acme").await;
    let (_, _, codes) = crate::mfa::enrol_totp(&app, &admin).await;
    for (round, code) in codes.iter().take(5).enumerate() {
        // One recovery code, presented by all at once for one session.
        let statuses: Vec<StatusCode> = join_all((0..RACERS).map(|i| {
            nodes[i % 2].post(
                "/api/v1/auth/mfa/step-up",
                Some(&admin.access_token),
                json!({"method": "recovery", "code": code}),
            )
        }))
        .await
        .iter()
        .map(|r| r.status())
        .collect();
        let passed = statuses
            .iter()
            .filter(|s| **s == StatusCode::NO_CONTENT)
            .count();
        assert_eq!(passed, 1, "round {round}: {statuses:?}");
    }
}
