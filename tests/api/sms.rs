//! IAM-3: SMS one-time codes through the signed webhook, against a real
//! local HTTP server that records what it is sent and checks each
//! message's HMAC signature the way an operator's webhook would.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{PASSWORD, TestApp, spawn_app, spawn_app_with};

pub const SECRET: &str = "webhook-secret-for-tests";

/// A text message the sink received, with whether its signature held.
#[derive(Clone, Debug)]
pub struct Texted {
    pub to: String,
    pub text: String,
    pub signed: bool,
}

impl Texted {
    pub fn code(&self) -> String {
        self.text
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| w.len() == 6)
            .unwrap_or_else(|| panic!("no code in {:?}", self.text))
            .to_owned()
    }
}

/// The webhook: answers `status` (204 unless told otherwise).
pub struct SmsSink {
    pub url: String,
    received: Arc<Mutex<Vec<Texted>>>,
    status: Arc<AtomicU16>,
    _server: tokio::task::JoinHandle<()>,
}

impl SmsSink {
    pub async fn start() -> SmsSink {
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(204));
        let (keep, answer) = (received.clone(), status.clone());
        let app = axum::Router::new().route(
            "/sms",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (keep, answer) = (keep.clone(), answer.clone());
                    async move {
                        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                        mac.update(&body);
                        let expected: String = mac
                            .finalize()
                            .into_bytes()
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        let signed = headers
                            .get("x-strongroom-signature")
                            .and_then(|v| v.to_str().ok())
                            == Some(format!("sha256={expected}").as_str());
                        let message: Value = serde_json::from_slice(&body).unwrap();
                        keep.lock().unwrap().push(Texted {
                            to: message["to"].as_str().unwrap().to_owned(),
                            text: message["text"].as_str().unwrap().to_owned(),
                            signed,
                        });
                        axum::http::StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap()
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sms", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        SmsSink {
            url,
            received,
            status,
            _server: server,
        }
    }

    pub fn texts(&self) -> Vec<Texted> {
        self.received.lock().unwrap().clone()
    }
}

async fn spawn_app_texting(sink: &SmsSink) -> TestApp {
    let url = sink.url.clone();
    spawn_app_with(move |c| {
        c.sms_webhook_url = Some(url);
        c.sms_webhook_secret = Some(SecretString::from(SECRET.to_owned()));
    })
    .await
}

#[tokio::test]
async fn ctl_iam_3_sms_codes_enrol_and_pass_the_second_step_through_a_signed_webhook() {
    let sink = SmsSink::start().await;
    let app = spawn_app_texting(&sink).await;
    let admin = app.admin("acme").await;
    let enrol = |phone: &'static str| {
        let (app, token) = (&app, admin.access_token.clone());
        async move {
            app.post(
                "/api/v1/auth/mfa/factors",
                Some(&token),
                json!({"kind": "sms", "phone": phone}),
            )
            .await
        }
    };
    // Not a number in international form: 422, and nothing is sent.
    for bad in ["601 234 567", "+0601234567", "+420 abc"] {
        let res = enrol(bad).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["field"], "phone");
    }
    assert!(sink.texts().is_empty());

    let res = enrol("+420 601 234 567").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let started: Value = res.json().await.unwrap();
    let texts = sink.texts();
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].to, "+420601234567");
    assert!(texts[0].signed, "the webhook can tell the message is ours");
    assert!(texts[0].text.contains("acme"), "{:?}", texts[0].text);
    let confirm = format!(
        "/api/v1/auth/mfa/factors/{}/confirm",
        started["factor_id"].as_str().unwrap()
    );
    let res = app
        .post(
            &confirm,
            Some(&admin.access_token),
            json!({"code": "000000"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .post(
            &confirm,
            Some(&admin.access_token),
            json!({"code": texts[0].code()}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // The user and their admins see the last digits only.
    let mine: Value = app
        .get("/api/v1/auth/mfa", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["factors"][0]["kind"], "sms");
    assert_eq!(mine["factors"][0]["label"], "+…567");
    assert!(!mine.to_string().contains("601234"));

    // The second step: a code texted on request, good by SMS only, once.
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}),
        )
        .await;
    let step: Value = res.json().await.unwrap();
    assert_eq!(step["methods"], json!(["sms", "recovery"]));
    let token = step["mfa_token"].clone();
    let res = app
        .post(
            "/api/v1/auth/mfa/sms-code",
            None,
            json!({"mfa_token": token}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let texted = sink.texts()[1].clone();
    assert!(texted.signed);
    assert_eq!(texted.to, "+420601234567");
    let verify = |method: &'static str, code: String| {
        let (app, token) = (&app, token.clone());
        async move {
            app.post(
                "/api/v1/auth/mfa/verify",
                None,
                json!({"mfa_token": token, "method": method, "code": code}),
            )
            .await
        }
    };
    assert_eq!(
        verify("email", texted.code()).await.status(),
        StatusCode::UNAUTHORIZED,
        "a texted code is no mailed code"
    );
    assert_eq!(verify("sms", texted.code()).await.status(), StatusCode::OK);
    assert_eq!(
        verify("sms", texted.code()).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A webhook that fails: 502 sms-not-sent, without the number or code.
    sink.status.store(503, Ordering::SeqCst);
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}),
        )
        .await;
    let step: Value = res.json().await.unwrap();
    let res = app
        .post(
            "/api/v1/auth/mfa/sms-code",
            None,
            json!({"mfa_token": step["mfa_token"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "urn:strongroom:problem:sms-not-sent");
    let sent = sink.texts().last().unwrap().code();
    assert!(!problem.to_string().contains(&sent) && !problem.to_string().contains("601234"));
}

#[tokio::test]
async fn ctl_iam_3_without_a_webhook_there_is_no_sms_factor() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let res = app
        .post(
            "/api/v1/auth/mfa/factors",
            Some(&admin.access_token),
            json!({"kind": "sms", "phone": "+420601234567"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let problem: Value = res.json().await.unwrap();
    assert!(problem.to_string().contains("sms-off"), "{problem}");
    let mine: Value = app
        .get("/api/v1/auth/mfa", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["factors"], json!([]));
}
