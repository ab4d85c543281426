use serde_json::{Value, json};

use crate::durability::tenant_admin_token;
use crate::helpers::{PASSWORD, ServerProcess, fresh_database, temp_dir};

/// Drives every flow that handles a secret against the real binary with
/// debug logging, then searches everything the server produced — its log
/// output, every byte of the database, every response body — for them.
#[tokio::test]
async fn ctl_aud_3_no_password_token_or_secret_appears_in_logs_database_or_responses() {
    let dir = temp_dir("secrets");
    let url = fresh_database(&dir).await;
    // Syslog output is scanned too.
    let syslog = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let syslog_url = format!("udp://{}", syslog.local_addr().unwrap());
    // A receiver reads as datagrams come, as a syslog daemon does: one
    // read only at the end would find its socket buffer overrun by the
    // debug log and the audit events dropped.
    syslog
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let (received, receiving) = std::sync::mpsc::channel::<String>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        loop {
            match syslog.recv(&mut buf) {
                Ok(n) => {
                    let _ = received.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                Err(_) if stopping.load(std::sync::atomic::Ordering::SeqCst) => break,
                Err(_) => {}
            }
        }
    });
    let server = ServerProcess::start_with_env(
        &dir,
        &url,
        "debug",
        &[("STRONGROOM_SYSLOG_URL", syslog_url.as_str())],
    )
    .await;
    let (admin_token, invitation) = tenant_admin_token(&server, &dir, &url).await;
    let client = crate::helpers::http_client();
    let base = server.address.clone();
    let mut secrets = vec![PASSWORD.to_owned(), invitation, admin_token.clone()];
    let mut responses = String::new();
    let mut call = async |method: &str, path: &str, token: Option<&str>, body: Value| -> Value {
        let mut req = client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let text = req.send().await.unwrap().text().await.unwrap();
        responses.push_str(&text);
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };

    let wrong = "Wrong-Password-Never-Logged-1";
    let weak = "password1234";
    secrets.extend([wrong.to_owned(), weak.to_owned()]);
    call(
        "POST",
        "/api/v1/auth/login",
        None,
        json!({"tenant": "acme", "email": "admin@acme.test", "password": wrong}),
    )
    .await;
    call(
        "POST",
        "/api/v1/auth/login",
        None,
        json!({"tenant": "acme", "email": "nobody@acme.test", "password": wrong}),
    )
    .await;
    // A failure delays the account's next attempt by a second (IAM-6).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let login = call(
        "POST",
        "/api/v1/auth/login",
        None,
        json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}),
    )
    .await;
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    secrets.push(login["access_token"].as_str().unwrap().to_owned());
    secrets.push(refresh.clone());
    let rotated = call(
        "POST",
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": refresh}),
    )
    .await;
    secrets.push(rotated["refresh_token"].as_str().unwrap().to_owned());
    secrets.push(rotated["access_token"].as_str().unwrap().to_owned());
    call(
        "POST",
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": refresh}),
    )
    .await; // reuse
    let invited = call(
        "POST",
        "/api/v1/users",
        Some(&admin_token),
        json!({"email": "w@acme.test", "role": "member"}),
    )
    .await;
    let user_invitation = invited["invitation_token"].as_str().unwrap().to_owned();
    call(
        "POST",
        "/api/v1/auth/invitations/accept",
        None,
        json!({"token": user_invitation, "password": weak}),
    )
    .await;
    let other_password = "lantern-quarry-biscuit-58";
    secrets.push(other_password.to_owned());
    call(
        "POST",
        "/api/v1/auth/invitations/accept",
        None,
        json!({"token": user_invitation, "password": other_password}),
    )
    .await;
    call(
        "GET",
        "/api/v1/me",
        Some("eyJhbGciOiJub25lIn0.e30."),
        json!(null),
    )
    .await;
    // A sensitive field's value (ENC-2), written, changed and filtered on.
    call(
        "POST",
        "/api/v1/collections",
        Some(&admin_token),
        json!({"name": "cases", "fields": [{"name": "notes", "type": "text", "sensitive": true}]}),
    )
    .await;
    let clinical = "haemophilia-carrier-record-7731";
    secrets.push(clinical.to_owned());
    let case = call(
        "POST",
        "/api/v1/collections/cases/records",
        Some(&admin_token),
        json!({"notes": clinical}),
    )
    .await;
    call(
        "PATCH",
        &format!(
            "/api/v1/collections/cases/records/{}",
            case["id"].as_str().unwrap()
        ),
        Some(&admin_token),
        json!({"notes": format!("{clinical} (reviewed)")}),
    )
    .await;
    call(
        "GET",
        &format!("/api/v1/collections/cases/records?filter[notes]={clinical}"),
        Some(&admin_token),
        json!(null),
    )
    .await;
    let audit = call(
        "GET",
        "/api/v1/audit?limit=500",
        Some(&admin_token),
        json!(null),
    )
    .await;
    // A browser session: its cookie and CSRF token are secrets too, used
    // with and without the token (a refusal is a security event).
    let browser = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(
            &json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD,
                      "mode": "cookie"}),
        )
        .send()
        .await
        .unwrap();
    let cookie = browser
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("__Host-sr_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = browser.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for token in [None, Some(csrf.as_str())] {
        let mut req = client
            .post(format!("{base}/api/v1/collections"))
            .header("cookie", &cookie)
            .json(&json!({"name": "browser", "fields": []}));
        if let Some(token) = token {
            req = req.header("x-csrf-token", token);
        }
        req.send().await.unwrap();
    }
    let value = cookie.trim_start_matches("__Host-sr_session=").to_owned();
    // The ids it names are stored, of course; its signature must not be.
    secrets.push(value.rsplit('.').next().unwrap().to_owned());
    secrets.push(value);
    secrets.push(csrf);
    // A graceful stop writes out everything buffered (the access log).
    server.stop().await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    receiver.join().unwrap();
    let mut shipped = String::new();
    for datagram in receiving.try_iter() {
        shipped.push_str(&datagram);
        shipped.push('\n');
    }
    assert!(
        shipped.contains("auth.refresh"),
        "syslog received the audit events ({} bytes)",
        shipped.len()
    );

    // The invitation tokens were handed out in exactly one response each; they
    // must appear nowhere else. Check the audit trail and the error bodies.
    let audit_text = audit.to_string();
    for secret in &secrets {
        assert!(
            !audit_text.contains(secret.as_str()),
            "audit trail contains a secret"
        );
    }
    let log = std::fs::read_to_string(
        dir.join(
            std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .find(|n| n.to_string_lossy().starts_with("server-"))
                .unwrap(),
        ),
    )
    .unwrap();
    assert!(log.contains("\"level\":\"DEBUG\""), "debug logging was on");
    let database = crate::helpers::database_dump(&dir, &url).await;
    assert!(
        database.contains("/api/v1/auth/refresh"),
        "the access log was written and scanned"
    );
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the server log contains a secret ({} chars)",
            secret.len()
        );
        assert!(
            !shipped.contains(secret.as_str()),
            "syslog output contains a secret ({} chars)",
            secret.len()
        );
        assert!(
            !database.contains(secret.as_str()),
            "the database contains a secret ({} chars)",
            secret.len()
        );
    }
    // Responses echo no password (tokens are legitimately returned to their owner).
    for password in [PASSWORD, wrong, weak, other_password] {
        assert!(
            !responses.contains(password),
            "a response echoed a password"
        );
    }
}

/// Every secret that travels by mail — invitation and reset tokens, an
/// admin reset's temporary password, the relay's own password — reaches
/// the mail and nothing else: not the server's debug log, not a byte of
/// the database (the outbox seals what waits and drops what was sent), not
/// any response, not the audit trail.
#[tokio::test]
async fn ctl_aud_3_no_mailed_token_or_password_appears_outside_the_mail() {
    const RELAY_SECRET: &str = "relay-secret-4c1f9a";
    let sink = crate::helpers::MailSink::with_auth("mailer", RELAY_SECRET).await;
    let texts = crate::sms::SmsSink::start().await;
    let dir = temp_dir("mail-secrets");
    let url = fresh_database(&dir).await;
    let relay = sink.url();
    let env = [
        ("STRONGROOM_SMTP_URL", relay.as_str()),
        ("STRONGROOM_SMTP_USERNAME", "mailer"),
        ("STRONGROOM_SMTP_PASSWORD", RELAY_SECRET),
        ("STRONGROOM_PUBLIC_URL", "https://app.strongroom.test"),
        ("STRONGROOM_SMS_WEBHOOK_URL", texts.url.as_str()),
        ("STRONGROOM_SMS_WEBHOOK_SECRET", crate::sms::SECRET),
    ];
    let server = ServerProcess::start_with_env(&dir, &url, "debug", &env).await;
    let out = crate::helpers::cli(&dir, &url)
        .envs(env)
        .args(crate::helpers::CREATE_ACME)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut responses = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !responses.contains("sr_inv_"),
        "the CLI shows no mailed token"
    );
    let mut secrets = vec![RELAY_SECRET.to_owned()];
    let invitation = sink.first_to("admin@acme.test").await.token();
    secrets.push(invitation.clone());

    let client = crate::helpers::http_client();
    let base = server.address.clone();
    let mut call = async |path: &str, token: Option<&str>, body: Value| -> Value {
        let mut req = client.post(format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let text = req.send().await.unwrap().text().await.unwrap();
        responses.push_str(&text);
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    let admin = call(
        "/api/v1/auth/invitations/accept",
        None,
        json!({"token": invitation, "password": PASSWORD}),
    )
    .await;
    let admin = admin["access_token"].as_str().unwrap().to_owned();
    let user = call(
        "/api/v1/users",
        Some(&admin),
        json!({"email": "w@acme.test", "role": "member"}),
    )
    .await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let user_invitation = sink.first_to("w@acme.test").await.token();
    secrets.push(user_invitation.clone());
    let first = "lantern-quarry-biscuit-58";
    call(
        "/api/v1/auth/invitations/accept",
        None,
        json!({"token": user_invitation, "password": first}),
    )
    .await;
    call(
        "/api/v1/auth/password/reset-request",
        None,
        json!({"tenant": "acme", "email": "w@acme.test"}),
    )
    .await;
    let reset = sink.nth_to("w@acme.test", 2).await.token();
    secrets.push(reset.clone());
    let second = "saffron-glacier-pulley-73";
    call(
        "/api/v1/auth/password/reset",
        None,
        json!({"token": reset, "password": second}),
    )
    .await;
    call(
        &format!("/api/v1/users/{user_id}/reset-password"),
        Some(&admin),
        json!({}),
    )
    .await;
    // The notice of the reset's change, then the temporary password.
    let temporary_mail = sink.nth_to("w@acme.test", 4).await;
    let temporary = temporary_mail
        .text
        .as_deref()
        .unwrap()
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 23 && l.split('-').all(|g| g.len() == 5))
        .unwrap()
        .to_owned();
    secrets.push(temporary.clone());
    let session = call(
        "/api/v1/auth/login",
        None,
        json!({"tenant": "acme", "email": "w@acme.test", "password": temporary}),
    )
    .await;
    let third = "harbour-pepper-tundra-19";
    call(
        "/api/v1/auth/password/change",
        session["access_token"].as_str(),
        json!({"current_password": temporary, "new_password": third}),
    )
    .await;
    sink.nth_to("w@acme.test", 5).await;
    for password in [first, second, third] {
        secrets.push(password.to_owned());
    }
    // Devices (IAM-7): the tokens the logins handed out are the client's
    // alone (they are in those responses, nowhere else); a login from
    // another device mails a "this wasn't me" link, which is used.
    let mut devices = vec![session["device_token"].as_str().unwrap().to_owned()];
    let again = call(
        "/api/v1/auth/login",
        None,
        json!({"tenant": "acme", "email": "w@acme.test", "password": third}),
    )
    .await;
    devices.push(again["device_token"].as_str().unwrap().to_owned());
    let not_me = sink.nth_to("w@acme.test", 6).await.token();
    assert!(not_me.starts_with("sr_nm_"));
    secrets.push(not_me.clone());
    call("/api/v1/auth/not-me", None, json!({"token": not_me})).await;
    let relink = sink.nth_to("w@acme.test", 7).await.token();
    secrets.push(relink);
    // Second factors (IAM-3): the texted codes, the number and the
    // webhook's secret appear nowhere; the recovery codes and the second
    // step's token only in the responses that hand them out.
    const PHONE: &str = "+420601234567";
    secrets.extend([crate::sms::SECRET.to_owned(), PHONE.to_owned()]);
    let enrolled = call(
        "/api/v1/auth/mfa/factors",
        Some(&admin),
        json!({"kind": "sms", "phone": PHONE}),
    )
    .await;
    let code = texts.texts()[0].code();
    secrets.push(code.clone());
    let confirmed = call(
        &format!(
            "/api/v1/auth/mfa/factors/{}/confirm",
            enrolled["factor_id"].as_str().unwrap()
        ),
        Some(&admin),
        json!({ "code": code }),
    )
    .await;
    for code in confirmed["recovery_codes"].as_array().unwrap() {
        devices.push(code.as_str().unwrap().to_owned());
    }
    let step = call(
        "/api/v1/auth/login",
        None,
        json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}),
    )
    .await;
    let mfa_token = step["mfa_token"].as_str().unwrap().to_owned();
    devices.push(mfa_token.clone());
    call(
        "/api/v1/auth/mfa/sms-code",
        None,
        json!({ "mfa_token": mfa_token }),
    )
    .await;
    let code = texts.texts()[1].code();
    secrets.push(code.clone());
    let passed = call(
        "/api/v1/auth/mfa/verify",
        None,
        json!({"mfa_token": mfa_token, "method": "sms", "code": code}),
    )
    .await;
    assert!(passed["access_token"].is_string(), "{passed}");
    let audit = reqwest::Client::new()
        .get(format!("{base}/api/v1/audit?limit=500"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(audit.contains("user.password.reset"), "{audit}");
    server.stop().await;

    let log = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("server-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    assert!(log.contains("\"level\":\"DEBUG\""), "debug logging was on");
    let database = crate::helpers::database_dump(&dir, &url).await;
    assert!(
        database.contains("password_temporary"),
        "the outbox was scanned"
    );
    for device in &devices {
        for (place, text) in [
            ("the server log", &log),
            ("the database", &database),
            ("the audit trail", &audit),
        ] {
            assert!(
                !text.contains(device.as_str()),
                "{place} contains a device token, recovery code or second-step token"
            );
        }
    }
    for secret in &secrets {
        for (place, text) in [
            ("the server log", &log),
            ("the database", &database),
            ("a response", &responses),
            ("the audit trail", &audit),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "{place} contains a mailed secret ({} chars)",
                secret.len()
            );
        }
    }
}
