//! IAM-3: second factors — TOTP enrolment and login, a code used once,
//! recovery codes used once, codes by mail (read from a real SMTP server),
//! the tenant's policy by role, step-up for sensitive operations, and an
//! admin who sees factors but never secrets.

use reqwest::StatusCode;
use serde_json::{Value, json};
use strongroom::identity::totp;

use crate::helpers::{MailSink, PASSWORD, Session, TestApp, spawn_app, spawn_app_mailing};

/// RFC 4648 base32 as authenticator apps read it.
pub fn base32_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {text}"),
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

fn now_step() -> i64 {
    totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp())
}

/// Enrols and confirms a TOTP factor for `who`: its secret, the step its
/// confirmation used, and the recovery codes.
pub async fn enrol_totp(app: &TestApp, who: &Session) -> (Vec<u8>, i64, Vec<String>) {
    let res = app
        .post(
            "/api/v1/auth/mfa/factors",
            Some(&who.access_token),
            json!({"kind": "totp"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let started: Value = res.json().await.unwrap();
    let secret = base32_decode(started["secret"].as_str().unwrap());
    let uri = started["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/") && uri.contains(started["secret"].as_str().unwrap())
    );
    let id = started["factor_id"].as_str().unwrap();
    let path = format!("/api/v1/auth/mfa/factors/{id}/confirm");
    let res = app
        .post(&path, Some(&who.access_token), json!({"code": "000000"}))
        .await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "a wrong code confirms nothing"
    );
    let step = now_step();
    let res = app
        .post(
            &path,
            Some(&who.access_token),
            json!({"code": totp::code(&secret, step)}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let confirmed: Value = res.json().await.unwrap();
    let codes: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .expect("the first factor comes with recovery codes")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, step, codes)
}

/// The password step of a login: the second step's token and methods.
async fn password_step(app: &TestApp, email: &str, password: &str) -> (String, Vec<String>) {
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"tenant": "acme", "email": email, "password": password}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["mfa_required"], true, "{body}");
    assert!(
        body.get("access_token").is_none(),
        "no session before the second factor"
    );
    let methods = body["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    (body["mfa_token"].as_str().unwrap().to_owned(), methods)
}

async fn verify(app: &TestApp, token: &str, method: &str, code: &str) -> reqwest::Response {
    app.post(
        "/api/v1/auth/mfa/verify",
        None,
        json!({"mfa_token": token, "method": method, "code": code}),
    )
    .await
}

#[tokio::test]
async fn ctl_iam_3_totp_logins_refuse_a_replayed_code_and_recovery_codes_work_once() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let (secret, step, codes) = enrol_totp(&app, &admin).await;
    let mine: Value = app
        .get("/api/v1/auth/mfa", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["factors"][0]["kind"], "totp");
    assert_eq!(mine["factors"][0]["confirmed"], true);
    assert_eq!(mine["recovery_codes_left"], 10);
    assert!(
        !mine.to_string().contains(&totp::base32(&secret)),
        "no secret shown again"
    );

    let (token, methods) = password_step(&app, "admin@acme.test", PASSWORD).await;
    assert_eq!(methods, ["totp", "recovery"]);
    // The code that confirmed the factor was used: it does not log in.
    let res = verify(&app, &token, "totp", &totp::code(&secret, step)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // The next step's code (within the allowed skew) does, once.
    let next = totp::code(&secret, step + 1);
    let res = verify(&app, &token, "totp", &next).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(app.get("/api/v1/me", access).await.status(), StatusCode::OK);
    assert_eq!(
        verify(&app, &token, "totp", &next).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (again, _) = password_step(&app, "admin@acme.test", PASSWORD).await;
    assert_eq!(
        verify(&app, &again, "totp", &next).await.status(),
        StatusCode::UNAUTHORIZED,
        "a used step is refused on a new login too"
    );

    // A recovery code, as typed (lower case, no dashes), once.
    let typed = codes[0].replace('-', "").to_lowercase();
    let res = verify(&app, &again, "recovery", &typed).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (third, _) = password_step(&app, "admin@acme.test", PASSWORD).await;
    assert_eq!(
        verify(&app, &third, "recovery", &codes[0]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Five codes per second step: then even a right one is refused.
    for _ in 0..4 {
        verify(&app, &third, "recovery", "AAAA-BBBB-CCCC-DDDD").await;
    }
    assert_eq!(
        verify(&app, &third, "recovery", &codes[1]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let mine: Value = app.get("/api/v1/me", access).await.json().await.unwrap();
    assert!(mine.is_object());
    let factors: Value = app
        .get("/api/v1/auth/mfa", access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(factors["recovery_codes_left"], 9);
}

#[tokio::test]
async fn ctl_iam_3_a_policy_by_role_lets_a_user_without_a_factor_only_enrol() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let member = app.user(&admin, "m@acme.test", "member").await;
    let viewer = app.user(&admin, "v@acme.test", "viewer").await;
    let res = app
        .patch(
            "/api/v1/tenant/settings",
            &admin.access_token,
            json!({"mfa_policy": ["bogus"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = app
        .patch(
            "/api/v1/tenant/settings",
            &admin.access_token,
            json!({"mfa_policy": ["member"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap()["mfa_policy"],
        json!(["member"])
    );
    tokio::time::sleep(strongroom::identity::SESSION_CHECK_TTL).await;
    // The member may only enrol; the viewer is not covered.
    let res = app.get("/api/v1/collections", &member.access_token).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "urn:strongroom:problem:mfa-enrolment-required"
    );
    assert_eq!(
        app.get("/api/v1/collections", &viewer.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    enrol_totp(&app, &member).await;
    tokio::time::sleep(strongroom::identity::SESSION_CHECK_TTL).await;
    assert_eq!(
        app.get("/api/v1/collections", &member.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    // From now on the member's logins take two steps.
    let (_, methods) = password_step(&app, "m@acme.test", PASSWORD).await;
    assert!(methods.contains(&"totp".to_owned()));
}

#[tokio::test]
async fn ctl_iam_3_factor_changes_and_password_changes_need_a_recent_second_factor() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let (secret, step, _) = enrol_totp(&app, &admin).await;
    // The session passed its factor at enrolment; make that long ago,
    // behind the app's back.
    let mut raw = app.raw().await;
    sqlx::query(&format!(
        "UPDATE sessions SET mfa_at = '2020-01-01T00:00:00.000000Z' WHERE id = '{}'",
        admin_session_id(&app, &admin).await
    ))
    .execute(&mut raw)
    .await
    .unwrap();
    tokio::time::sleep(strongroom::identity::SESSION_CHECK_TTL).await;
    let factors: Value = app
        .get("/api/v1/auth/mfa", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    let id = factors["factors"][0]["id"].as_str().unwrap().to_owned();
    let res = app
        .delete(
            &format!("/api/v1/auth/mfa/factors/{id}"),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "urn:strongroom:problem:step-up-required");
    let res = app
        .post(
            "/api/v1/auth/password/change",
            Some(&admin.access_token),
            json!({"current_password": PASSWORD, "new_password": "fresh-lantern-copper-77"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = app
        .post(
            "/api/v1/auth/mfa/recovery-codes",
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Step up with the next code, then it all works.
    let res = app
        .post(
            "/api/v1/auth/mfa/step-up",
            Some(&admin.access_token),
            json!({"method": "totp", "code": totp::code(&secret, step + 1)}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .post(
            "/api/v1/auth/mfa/recovery-codes",
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let fresh: Value = res.json().await.unwrap();
    assert_eq!(fresh["recovery_codes"].as_array().unwrap().len(), 10);
    let res = app
        .delete(
            &format!("/api/v1/auth/mfa/factors/{id}"),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // Without a factor, the login is one step again.
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}),
        )
        .await;
    assert!(res.json::<Value>().await.unwrap()["access_token"].is_string());
    let events = app.audit(&admin).await;
    for action in [
        "auth.mfa.enrol",
        "auth.mfa.confirm",
        "auth.mfa.step_up",
        "auth.mfa.remove",
    ] {
        assert!(
            events.iter().any(|e| e["action"] == action),
            "{action} audited"
        );
    }
    assert!(
        !serde_json::to_string(&events)
            .unwrap()
            .contains(&totp::base32(&secret))
    );
}

async fn admin_session_id(app: &TestApp, who: &Session) -> String {
    let sessions: Value = app
        .get("/api/v1/auth/sessions", &who.access_token)
        .await
        .json()
        .await
        .unwrap();
    sessions["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn ctl_iam_3_mailed_codes_are_a_second_factor_and_admins_see_factors_not_secrets() {
    let sink = MailSink::start().await;
    let app = spawn_app_mailing(&sink).await;
    let admin = app.admin_via(&sink, "acme").await;
    let anna = app
        .user_via(&sink, &admin, "anna@acme.test", "member")
        .await;
    let res = app
        .post(
            "/api/v1/auth/mfa/factors",
            Some(&anna.access_token),
            json!({"kind": "email"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let started: Value = res.json().await.unwrap();
    assert!(started.get("secret").is_none());
    let code_of = |mail: &crate::helpers::SunkMail| -> String {
        mail.text
            .as_deref()
            .unwrap()
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))
            .unwrap()
            .to_owned()
    };
    let mail = sink.nth_about("anna@acme.test", "Your code for", 1).await;
    let res = app
        .post(
            &format!(
                "/api/v1/auth/mfa/factors/{}/confirm",
                started["factor_id"].as_str().unwrap()
            ),
            Some(&anna.access_token),
            json!({"code": code_of(&mail)}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    let (token, methods) = password_step(&app, "anna@acme.test", PASSWORD).await;
    assert_eq!(methods, ["email", "recovery"]);
    let res = app
        .post(
            "/api/v1/auth/mfa/email-code",
            None,
            json!({"mfa_token": token}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let mail = sink.nth_about("anna@acme.test", "Your code for", 2).await;
    let res = verify(&app, &token, "email", &code_of(&mail)).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );

    // The admin sees the factor, not its secret; removing it (a lost
    // phone) returns anna to password logins.
    let res = app
        .get(
            &format!("/api/v1/users/{}/mfa", anna.user_id),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["factors"][0]["kind"], "email");
    assert!(
        seen["factors"][0].get("sealed").is_none() && seen["factors"][0].get("secret").is_none()
    );
    let res = app
        .get(
            &format!("/api/v1/users/{}/mfa", anna.user_id),
            &anna.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = app
        .delete(
            &format!("/api/v1/users/{}/mfa", anna.user_id),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"tenant": "acme", "email": "anna@acme.test", "password": PASSWORD}),
        )
        .await;
    assert!(res.json::<Value>().await.unwrap()["access_token"].is_string());
}

#[tokio::test]
async fn ctl_iam_3_a_second_step_takes_five_wrong_codes_then_ends() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let (secret, step, codes) = enrol_totp(&app, &admin).await;
    let (token, _) = password_step(&app, "admin@acme.test", PASSWORD).await;
    // Wrong TOTP codes, a replayed one and wrong recovery codes all count.
    let replayed = totp::code(&secret, step);
    for (method, code) in [
        ("totp", "000000"),
        ("totp", replayed.as_str()),
        ("recovery", "AAAA-BBBB-CCCC-DDDD"),
        ("recovery", "not a code"),
        ("email", "123456"),
    ] {
        let res = verify(&app, &token, method, code).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} {code}");
    }
    // The sixth try is refused even with a right code, which stays unused.
    let res = verify(&app, &token, "recovery", &codes[0]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "urn:strongroom:problem:invalid-token");
    let (next, _) = password_step(&app, "admin@acme.test", PASSWORD).await;
    assert_eq!(
        verify(&app, &next, "recovery", &codes[0]).await.status(),
        StatusCode::OK
    );
}
