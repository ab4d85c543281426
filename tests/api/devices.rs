//! IAM-7: a login from a device the user never used is audited and mailed
//! to them, with a "this wasn't me" link that ends everything and makes
//! whoever logged in prove the mailbox; a known device is not announced.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{MailSink, PASSWORD, spawn_app_mailing};

#[tokio::test]
async fn ctl_iam_7_a_new_device_is_mailed_and_this_wasnt_me_ends_everything() {
    let sink = MailSink::start().await;
    let app = spawn_app_mailing(&sink).await;
    let admin = app.admin_via(&sink, "acme").await;
    let anna = app
        .user_via(&sink, &admin, "anna@acme.test", "member")
        .await;
    let login = |device: Option<String>, mode: &'static str| {
        let mut body = json!({"tenant": "acme", "email": "anna@acme.test", "password": PASSWORD, "mode": mode});
        if let Some(device) = device {
            body["device_token"] = json!(device);
        }
        app.post("/api/v1/auth/login", None, body)
    };
    // Her first device is simply hers: registered, not announced.
    let res = login(None, "token").await;
    assert_eq!(res.status(), StatusCode::OK);
    let first: Value = res.json().await.unwrap();
    let laptop = first["device_token"].as_str().unwrap().to_owned();
    // Again from it: known, nothing new.
    let res = login(Some(laptop.clone()), "token").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.json::<Value>()
            .await
            .unwrap()
            .get("device_token")
            .is_none()
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        sink.to("anna@acme.test").len(),
        1,
        "only the invitation so far"
    );

    // A browser she never used: the device token goes into a cookie of its
    // own, and anna hears of the login.
    let res = login(None, "cookie").await;
    assert_eq!(res.status(), StatusCode::OK);
    let device_cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("__Host-sr_device="))
        .expect("a device cookie")
        .to_owned();
    assert!(device_cookie.contains("HttpOnly") && device_cookie.contains("Secure"));
    assert!(
        device_cookie.contains("Max-Age=34560000"),
        "{device_cookie}"
    );
    let mail = sink.nth_to("anna@acme.test", 2).await;
    assert_eq!(mail.subject, "A new sign-in to acme Ltd");
    let text = mail.text.clone().unwrap();
    assert!(text.contains("strongroom-tests/1"), "{text}");
    assert!(text.contains("127.0.0.0/24"), "{text}");
    assert!(
        text.contains("https://app.strongroom.test/not-me#token=sr_nm_"),
        "{text}"
    );
    // That browser, recognised by its cookie, is not announced again.
    let cookie_value = device_cookie.split(';').next().unwrap().to_owned();
    let res = app
        .client
        .post(format!("{}/api/v1/auth/login", app.address))
        .header("cookie", &cookie_value)
        .json(&json!({"tenant": "acme", "email": "anna@acme.test", "password": PASSWORD, "mode": "cookie"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(sink.to("anna@acme.test").len(), 2);
    let events = app.audit(&admin).await;
    let new_devices: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "auth.new_device")
        .collect();
    assert_eq!(new_devices.len(), 2, "the laptop and the browser");
    // Each new device is an event of its own, committed with its login's
    // (the next number in the chain), and the chain still verifies.
    for device in &new_devices {
        let login = events
            .iter()
            .find(|e| e["seq"].as_i64() == device["seq"].as_i64().map(|s| s - 1))
            .expect("the event before a new device");
        assert_eq!(login["action"], "auth.login", "{login}");
        assert_eq!(login["request_id"], device["request_id"]);
        assert_eq!(device["target"]["type"], "device", "{device}");
    }
    let res = app.get("/api/v1/audit/verify", &admin.access_token).await;
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // "This wasn't me."
    let not_me = mail.token();
    let res = app
        .post("/api/v1/auth/not-me", None, json!({"token": not_me}))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(strongroom::identity::SESSION_CHECK_TTL).await;
    assert_eq!(
        app.get("/api/v1/me", &anna.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The password is gone: whoever knew it cannot log in, on any device.
    let res = login(Some(laptop.clone()), "token").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Used once.
    let res = app
        .post("/api/v1/auth/not-me", None, json!({"token": not_me}))
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Anna proves her mailbox with the reset link it sent, and is back.
    let reset = sink.nth_to("anna@acme.test", 3).await;
    assert_eq!(reset.subject, "Reset your password for acme Ltd");
    let res = app
        .post(
            "/api/v1/auth/password/reset",
            None,
            json!({"token": reset.token(), "password": "second-chance-harbor-64"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"tenant": "acme", "email": "anna@acme.test", "password": "second-chance-harbor-64"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        app.audit(&admin)
            .await
            .iter()
            .any(|e| e["action"] == "auth.not_me" && e["target"]["id"] == anna.user_id.as_str())
    );
}
