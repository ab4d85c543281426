//! IAM-3: passkeys, registered and used with a software authenticator
//! (soft-webauthn, an implementation independent of ours) as a second
//! factor, for step-up, and for a login without a password; and trusted
//! devices that skip the second factor for the tenant's days.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Authenticator, PASSKEY_ORIGIN, PASSWORD, TestApp, register_passkey, spawn_app_for_passkeys,
};

async fn login(app: &TestApp, body: Value) -> Value {
    let res = app.post("/api/v1/auth/login", None, body).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

fn password(email: &str) -> Value {
    json!({"tenant": "acme", "email": email, "password": PASSWORD})
}

#[tokio::test]
async fn ctl_iam_3_a_passkey_registers_and_answers_a_logins_second_step_once() {
    let app = spawn_app_for_passkeys().await;
    let admin = app.admin("acme").await;
    let mut key = Authenticator::start();

    // A credential created for another origin, or against another
    // challenge, is refused and confirms nothing.
    let res = app
        .post(
            "/api/v1/auth/mfa/factors",
            Some(&admin.access_token),
            json!({"kind": "passkey", "name": "x".repeat(65)}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = app
        .post(
            "/api/v1/auth/mfa/factors",
            Some(&admin.access_token),
            json!({"kind": "passkey", "name": "laptop"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let started: Value = res.json().await.unwrap();
    let options = &started["passkey"]["publicKey"];
    assert_eq!(options["rp"]["id"], "app.acme.test");
    assert_eq!(options["attestation"], "none");
    let confirm = format!(
        "/api/v1/auth/mfa/factors/{}/confirm",
        started["factor_id"].as_str().unwrap()
    );
    let phished = key
        .create(&started["passkey"], "https://app.acme.test.evil.example")
        .await;
    let res = app
        .post(
            &confirm,
            Some(&admin.access_token),
            json!({ "credential": phished }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("origin"),
        "{problem}"
    );
    let mut other_challenge = started["passkey"].clone();
    other_challenge["publicKey"]["challenge"] =
        json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let stale = key.create(&other_challenge, PASSKEY_ORIGIN).await;
    let res = app
        .post(
            &confirm,
            Some(&admin.access_token),
            json!({ "credential": stale }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let garbage =
        json!({"type": "public-key", "rawId": "AA", "response": {"clientDataJSON": "%%"}});
    let res = app
        .post(
            &confirm,
            Some(&admin.access_token),
            json!({ "credential": garbage }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let mine: Value = app
        .get("/api/v1/auth/mfa", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["factors"][0]["confirmed"], false);
    // The real one.
    let credential = key.create(&started["passkey"], PASSKEY_ORIGIN).await;
    let res = app
        .post(
            &confirm,
            Some(&admin.access_token),
            json!({ "credential": credential }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let confirmed: Value = res.json().await.unwrap();
    assert_eq!(confirmed["recovery_codes"].as_array().unwrap().len(), 10);
    let mine: Value = app
        .get("/api/v1/auth/mfa", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["factors"][0]["kind"], "passkey");
    assert_eq!(mine["factors"][0]["label"], "laptop");
    assert_eq!(mine["factors"][0]["confirmed"], true);

    // The password step offers the passkey, with the options to sign.
    let step = login(&app, password("admin@acme.test")).await;
    assert_eq!(step["mfa_required"], true);
    assert_eq!(step["methods"], json!(["passkey", "recovery"]));
    let allowed = &step["passkey"]["publicKey"]["allowCredentials"];
    assert_eq!(allowed[0]["id"], credential["rawId"]);
    let assertion = key.get(&step["passkey"], false).await;
    // A code is no passkey answer, and a passkey answer needs its method.
    let res = app
        .post(
            "/api/v1/auth/mfa/verify",
            None,
            json!({"mfa_token": step["mfa_token"], "method": "passkey", "code": "123456"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = app
        .post(
            "/api/v1/auth/mfa/verify",
            None,
            json!({"mfa_token": step["mfa_token"], "method": "passkey", "credential": assertion}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    assert!(tokens["access_token"].is_string());
    // The same assertion once more: the second step is spent; against a
    // new login's second step, it signed another challenge.
    let res = app
        .post(
            "/api/v1/auth/mfa/verify",
            None,
            json!({"mfa_token": step["mfa_token"], "method": "passkey", "credential": assertion}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let next = login(&app, password("admin@acme.test")).await;
    let res = app
        .post(
            "/api/v1/auth/mfa/verify",
            None,
            json!({"mfa_token": next["mfa_token"], "method": "passkey", "credential": assertion}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Another authenticator's key, presented under this credential's id,
    // does not verify.
    let mut thief = Authenticator::start();
    let member = app.user(&admin, "member@acme.test", "member").await;
    register_passkey(&app, &member, &mut thief).await;
    let mut forged = thief.get(&next["passkey"], false).await;
    forged["id"] = credential["rawId"].clone();
    forged["rawId"] = credential["rawId"].clone();
    let res = app
        .post(
            "/api/v1/auth/mfa/verify",
            None,
            json!({"mfa_token": next["mfa_token"], "method": "passkey", "credential": forged}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // The real key on the same step still gets in.
    let fresh = key.get(&next["passkey"], false).await;
    let res = app
        .post(
            "/api/v1/auth/mfa/verify",
            None,
            json!({"mfa_token": next["mfa_token"], "method": "passkey", "credential": fresh}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn ctl_iam_3_a_passkey_logs_in_without_a_password_only_if_it_verified_its_user() {
    let app = spawn_app_for_passkeys().await;
    let admin = app.admin("acme").await;
    let mut key = Authenticator::start();
    register_passkey(&app, &admin, &mut key).await;

    let start = |tenant: &'static str| {
        let app = &app;
        async move {
            let res = app
                .post(
                    "/api/v1/auth/passkey/start",
                    None,
                    json!({ "tenant": tenant }),
                )
                .await;
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<Value>().await.unwrap()
        }
    };
    let ticket = start("acme").await;
    let unknown = start("no-such-tenant").await;
    // An unknown tenant gets a ticket of the same shape.
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ticket), keys(&unknown));
    assert_eq!(
        ticket["passkey"]["publicKey"]["userVerification"],
        "required"
    );
    assert_eq!(
        ticket["passkey"]["publicKey"]["allowCredentials"],
        json!([]),
        "a discoverable credential: the ticket names no user"
    );

    let passkey_login = |ticket: &Value, credential: &Value| {
        let body = json!({"ticket": ticket["ticket"], "credential": credential});
        let app = &app;
        async move { app.post("/api/v1/auth/passkey/login", None, body).await }
    };
    // Presence without verification does not replace a password.
    let unverified = key.get(&ticket["passkey"], false).await;
    let res = passkey_login(&ticket, &unverified).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "urn:strongroom:problem:invalid-credentials"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("passkey"),
        "{problem}"
    );
    let verified = key.get(&ticket["passkey"], true).await;
    let res = passkey_login(&ticket, &verified).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    // The session passed a second factor: a sensitive operation needs no
    // step-up.
    let res = app
        .post("/api/v1/auth/mfa/recovery-codes", Some(&access), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // A ticket works once; a forged or another tenant's ticket not at all.
    let again = key.get(&ticket["passkey"], true).await;
    assert_eq!(
        passkey_login(&ticket, &again).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let for_unknown = key.get(&unknown["passkey"], true).await;
    assert_eq!(
        passkey_login(&unknown, &for_unknown).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let mut forged = start("acme").await;
    let text = forged["ticket"].as_str().unwrap().to_owned();
    let (body, _) = text.rsplit_once('.').unwrap();
    forged["ticket"] = json!(format!("{body}.AAAA"));
    let signed = key.get(&forged["passkey"], true).await;
    assert_eq!(
        passkey_login(&forged, &signed).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Step-up with the passkey, ten minutes later in spirit: a ticket of
    // the caller's, answered by their key.
    let res = app
        .post("/api/v1/auth/mfa/step-up/passkey", Some(&access), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let step_up: Value = res.json().await.unwrap();
    assert_eq!(
        step_up["passkey"]["publicKey"]["allowCredentials"][0]["id"],
        verified["rawId"]
    );
    let answer = key.get(&step_up["passkey"], false).await;
    let res = app
        .post(
            "/api/v1/auth/mfa/step-up",
            Some(&access),
            json!({"method": "passkey", "ticket": step_up["ticket"], "credential": answer}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .post(
            "/api/v1/auth/mfa/step-up",
            Some(&access),
            json!({"method": "passkey", "ticket": step_up["ticket"], "credential": answer}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "a step-up ticket works once"
    );

    // Every passkey event is audited, and no ticket or challenge is kept
    // in the trail.
    let trail: Value = app
        .get("/api/v1/audit?limit=200", &access)
        .await
        .json()
        .await
        .unwrap();
    let text = trail.to_string();
    for action in [
        "auth.mfa.enrol",
        "auth.mfa.confirm",
        "auth.login",
        "auth.mfa.step_up",
    ] {
        assert!(text.contains(action), "{action} is audited");
    }
    assert!(!text.contains(ticket["ticket"].as_str().unwrap()));
}

#[tokio::test]
async fn ctl_iam_3_a_trusted_device_skips_the_second_factor_until_its_trust_ends() {
    let app = spawn_app_for_passkeys().await;
    let admin = app.admin("acme").await;
    // Recovery codes pass the second step as well as TOTP, without
    // waiting for a fresh TOTP step each time.
    let (_, _, codes) = crate::mfa::enrol_totp(&app, &admin).await;
    let mut codes = codes.into_iter();
    let mut next_code = || codes.next().unwrap();
    let verify = |step: &Value, code: String, trust: bool| {
        let body = json!({"mfa_token": step["mfa_token"], "method": "recovery", "code": code,
                          "trust_device": trust});
        let app = &app;
        async move {
            let res = app.post("/api/v1/auth/mfa/verify", None, body).await;
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<Value>().await.unwrap()
        }
    };
    // The tenant allows no trust by default: asking for it changes nothing.
    let step = login(&app, password("admin@acme.test")).await;
    let tokens = verify(&step, next_code(), true).await;
    assert!(tokens.get("device_trusted_until").is_none(), "{tokens}");
    let device = tokens["device_token"].as_str().unwrap().to_owned();
    let with_device = json!({"tenant": "acme", "email": "admin@acme.test",
                             "password": PASSWORD, "device_token": device});
    assert_eq!(login(&app, with_device.clone()).await["mfa_required"], true);

    for bad in [json!(-1), json!(91), json!("7")] {
        let res = app
            .patch(
                "/api/v1/tenant/settings",
                &admin.access_token,
                json!({ "mfa_trust_days": bad }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let res = app
        .patch(
            "/api/v1/tenant/settings",
            &admin.access_token,
            json!({"mfa_trust_days": 30}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    // Trusted now, for 30 days: the next login from it is one step.
    let step = login(&app, with_device.clone()).await;
    let tokens = verify(&step, next_code(), true).await;
    let until = tokens["device_trusted_until"].as_str().unwrap().to_owned();
    let in_days =
        time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339)
            .unwrap()
            - time::OffsetDateTime::now_utc();
    assert!((29..=30).contains(&in_days.whole_days()), "{until}");
    let direct = login(&app, with_device.clone()).await;
    assert!(direct.get("mfa_required").is_none(), "{direct}");
    let access = direct["access_token"].as_str().unwrap().to_owned();
    // Skipping the second factor is no second factor: sensitive
    // operations still need a step-up.
    let res = app
        .post("/api/v1/auth/mfa/recovery-codes", Some(&access), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Another device (no token) is not trusted.
    assert_eq!(
        login(&app, password("admin@acme.test")).await["mfa_required"],
        true
    );

    // The user sees the trust in the device list and ends it there.
    let devices: Value = app
        .get("/api/v1/auth/devices", &access)
        .await
        .json()
        .await
        .unwrap();
    let trusted: Vec<&Value> = devices["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["trusted_until"].is_string())
        .collect();
    assert_eq!(trusted.len(), 1, "{devices}");
    let path = format!(
        "/api/v1/auth/devices/{}/trust",
        trusted[0]["id"].as_str().unwrap()
    );
    assert_eq!(
        app.delete(&path, &access).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete("/api/v1/auth/devices/nope/trust", &access)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(login(&app, with_device.clone()).await["mfa_required"], true);

    // Trusted again; the tenant turning trust off ends it at once.
    let step = login(&app, with_device.clone()).await;
    verify(&step, next_code(), true).await;
    assert!(
        login(&app, with_device.clone())
            .await
            .get("mfa_required")
            .is_none()
    );
    let res = app
        .patch(
            "/api/v1/tenant/settings",
            &admin.access_token,
            json!({"mfa_trust_days": 0}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(login(&app, with_device.clone()).await["mfa_required"], true);
}
