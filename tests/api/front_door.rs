//! The front door: HTTPS only (ENC-1, NET-1) and the limits every
//! connection lives under (NET-5).

use crate::helpers::RunOff;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app_with, temp_dir};

/// A certificate written by `strongroom dev-cert`, and its directory.
fn dev_cert() -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir("cert");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args(["dev-cert", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.join("key.pem");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is its owner's alone");
    (dir.join("cert.pem"), key)
}

fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn port(app: &TestApp) -> u16 {
    app.address.rsplit(':').next().unwrap().parse().unwrap()
}

/// A rustls client trusting only `cert`, limited to `versions`.
fn tls_client(
    cert: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    tls_client_speaking(cert, versions, &[b"h2", b"http/1.1"])
}

fn tls_client_speaking(
    cert: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS 1.1 ClientHello offering only TLS 1.1-era suites (CBC, RC4).
fn tls_1_1_client_hello() -> Vec<u8> {
    let suites: [u16; 4] = [0x002f, 0x0035, 0x000a, 0x0005];
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        body.extend(suite.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    let mut handshake = vec![1]; // ClientHello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test]
async fn ctl_enc_1_the_listener_speaks_only_tls_1_2_and_1_3_with_aead_suites_and_http2() {
    let (cert, key) = dev_cert();
    let redirect = free_address();
    let app = spawn_app_with(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
        c.http_redirect_listen = Some(redirect);
    })
    .await;
    let port = port(&app);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    // TLS 1.3, and HTTP/2 chosen by ALPN.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tls_client(&cert, &[&rustls::version::TLS13])
        .connect(name.clone(), tcp)
        .await
        .expect("a TLS 1.3 handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));

    // TLS 1.2 too, with an AEAD suite.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tls_client(&cert, &[&rustls::version::TLS12])
        .connect(name, tcp)
        .await
        .expect("a TLS 1.2 handshake");
    let suite = format!(
        "{:?}",
        tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
    );
    assert!(
        suite.contains("GCM") || suite.contains("CHACHA20_POLY1305"),
        "{suite}"
    );

    // TLS 1.1 (with its CBC and RC4 suites) gets an alert, nothing else.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(&tls_1_1_client_hello()).await.unwrap();
    let mut answer = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut answer))
        .await
        .expect("an answer")
        .expect("an alert record");
    assert_eq!(answer[0], 0x15, "an alert record: {answer:?}");
    assert_eq!(answer[5], 2, "a fatal alert: {answer:?}");
    assert!(
        [40, 70].contains(&answer[6]),
        "handshake_failure or protocol_version: {answer:?}"
    );

    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP on the HTTPS port: {plain:?}");

    // HTTPS works, over HTTP/2, and says so for two years (NET-1).
    let pem = std::fs::read(&cert).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );

    // The plain-HTTP address only redirects: no content, no cookie.
    let res = client
        .post(format!("http://{redirect}/api/v1/auth/login?x=1"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        res.headers()["location"],
        format!("https://127.0.0.1:{port}/api/v1/auth/login?x=1")
    );
    assert!(res.headers().get("set-cookie").is_none());
    assert!(res.text().await.unwrap().is_empty());
}

#[tokio::test]
async fn ctl_net_1_hsts_follows_a_trusted_proxy_that_ended_tls_and_nobody_else() {
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let get = |proto: Option<&'static str>| {
        let mut req = app.client.get(format!("{}/healthz", app.address));
        if let Some(proto) = proto {
            req = req.header("x-forwarded-proto", proto);
        }
        req.send()
    };
    let res = get(Some("https")).await.unwrap();
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    let res = get(Some("http")).await.unwrap();
    assert!(res.headers().get("strict-transport-security").is_none());
    let res = get(None).await.unwrap();
    assert!(res.headers().get("strict-transport-security").is_none());

    // From a peer that is no trusted proxy the header means nothing.
    let app = spawn_app_with(|_| {}).await;
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("strict-transport-security").is_none());
}

#[tokio::test]
async fn ctl_net_5_half_sent_headers_are_cut_off_after_the_header_timeout() {
    let app = spawn_app_with(|c| c.header_read_timeout_seconds = 1).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection stayed open 10 s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    // A complete request on a fresh connection is served as ever.
    let res = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn ctl_net_5_connections_beyond_the_per_address_cap_are_closed_at_once() {
    let app = spawn_app_with(|c| c.max_connections_per_ip = 3).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(&address).await.unwrap();
        // Each is admitted and served.
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        tcp.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(tcp);
    }
    let mut fourth = TcpStream::connect(&address).await.unwrap();
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut buf))
        .await
        .expect("closed at once, not left hanging");
    assert!(
        read.is_err() || buf.is_empty(),
        "the fourth connection was served: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // A place freed is a place again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut tcp = TcpStream::connect(&address).await.unwrap();
        let _ = tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
        if buf.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no place came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ctl_enc_1_a_renewed_certificate_is_taken_up_without_dropping_connections() {
    let (cert, key) = dev_cert();
    let app = spawn_app_with(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    let port = port(&app);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let old = std::fs::read(&cert).unwrap();
    let kept_dir = temp_dir("cert-old");
    let kept = kept_dir.join("cert.pem");
    std::fs::write(&kept, &old).unwrap();

    // A connection opened with the old certificate …
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut open = tls_client_speaking(&kept, &[&rustls::version::TLS13], &[b"http/1.1"])
        .connect(name.clone(), tcp)
        .await
        .unwrap();

    // … the files are renewed in place (a new key and certificate) …
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args(["dev-cert", "--out"])
        .arg(cert.parent().unwrap())
        .run()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_ne!(std::fs::read(&cert).unwrap(), old);

    // … new handshakes get the new one within the polling interval …
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if tls_client(&cert, &[&rustls::version::TLS13])
            .connect(name.clone(), tcp)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not taken up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // … and the one already open still serves.
    open.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("the open connection was dropped: {e}"));
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut buf))
        .await
        .unwrap()
        .expect("an answer on the open connection");
    assert_eq!(&buf, b"HTTP/1.1 200");
}

/// `strongroom serve` in `environment`, with `env` set; its exit status and
/// what it printed, or `None` if it was still running after `wait`.
fn serve_briefly(
    dir: &std::path::Path,
    env: &[(&str, String)],
    wait: Duration,
) -> Option<(i32, String)> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STRONGROOM_DATA_DIR", dir)
        .env("STRONGROOM_LISTEN", free_address().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return Some((status.code().unwrap_or(-1), stderr));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn ctl_ten_3_production_refuses_to_start_on_each_unsafe_setting() {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let (cert, key) = dev_cert();
    let master =
        base64::engine::general_purpose::STANDARD.encode(strongroom::crypto::random_bytes::<32>());
    let dir = temp_dir("production");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let safe = vec![
        ("STRONGROOM_ENVIRONMENT", "production".to_owned()),
        ("STRONGROOM_MASTER_KEY", master.clone()),
        ("STRONGROOM_TLS_CERT", cert.display().to_string()),
        ("STRONGROOM_TLS_KEY", key.display().to_string()),
        ("STRONGROOM_LOG_LEVEL", "info".to_owned()),
    ];
    let with = |key: &'static str, value: &str| {
        let mut env: Vec<(&str, String)> =
            safe.iter().filter(|(k, _)| *k != key).cloned().collect();
        env.push((key, value.to_owned()));
        env
    };
    let without = |key: &'static str| -> Vec<(&str, String)> {
        safe.iter().filter(|(k, _)| *k != key).cloned().collect()
    };
    let zeros = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
    let public = "0.0.0.0:0".to_owned();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            with("STRONGROOM_LOG_LEVEL", "strongroom=debug"),
            "logs debug detail",
        ),
        (with("STRONGROOM_ACCESS_LOG", "false"), "access_log is off"),
        (with("STRONGROOM_MASTER_KEY", &zeros), "all zeros"),
        (without("STRONGROOM_MASTER_KEY"), "no master key was given"),
        (
            {
                let mut env = without("STRONGROOM_TLS_CERT");
                env.retain(|(k, _)| *k != "STRONGROOM_TLS_KEY");
                env.push(("STRONGROOM_LISTEN", public.clone()));
                env
            },
            "plain HTTP on a public address",
        ),
    ];
    for (env, expected) in cases {
        let (code, stderr) =
            serve_briefly(&dir, &env, Duration::from_secs(20)).expect("it refused to start");
        assert_eq!(code, 2, "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(
            stderr
                .lines()
                .all(|l| l.starts_with("refusing to start in production: ")),
            "one clear line per problem: {stderr}"
        );
    }
    // Several problems at once: a line each.
    let mut env = with("STRONGROOM_ACCESS_LOG", "false");
    env.push(("STRONGROOM_LOG_LEVEL", "debug".to_owned()));
    let (code, stderr) = serve_briefly(&dir, &env, Duration::from_secs(20)).unwrap();
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 2, "{stderr}");

    // An open data dir is refused.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, stderr) = serve_briefly(&dir, &safe, Duration::from_secs(20)).unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("open to group or others"), "{stderr}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    // With every setting safe, it starts (and keeps running).
    assert!(
        serve_briefly(&dir, &safe, Duration::from_secs(3)).is_none(),
        "production with safe settings did not stay up"
    );

    // A key the server generated for itself is not one production was given.
    let generated = temp_dir("generated");
    let dev = vec![("STRONGROOM_ENVIRONMENT", "development".to_owned())];
    assert!(serve_briefly(&generated, &dev, Duration::from_secs(3)).is_none());
    assert!(generated.join("master.key").exists());
    let env = without("STRONGROOM_MASTER_KEY");
    let (code, stderr) = serve_briefly(&generated, &env, Duration::from_secs(20)).unwrap();
    assert_eq!(code, 2);
    assert!(
        stderr.contains("generated by the server itself"),
        "{stderr}"
    );
}

#[tokio::test]
async fn ctl_ten_3_every_response_and_healthz_name_the_environment() {
    let app = spawn_app_with(|c| c.environment = strongroom::config::Environment::Staging).await;
    let res = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(res.headers()["strongroom-environment"], "staging");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["environment"], "staging");
    let res = app
        .request(Method::GET, "/api/v1/no-such-route", None, None)
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["strongroom-environment"], "staging");
    // Every audit event names it too, under the chain's hash.
    let admin = app.admin("acme").await;
    let events = app.audit(&admin).await;
    assert!(!events.is_empty());
    for event in &events {
        assert_eq!(event["environment"], "staging", "{event}");
    }
    let verified: serde_json::Value = app
        .get("/api/v1/audit/verify", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
    let mut raw = app.raw().await;
    sqlx::query("UPDATE audit_events SET environment = 'production'")
        .execute(&mut raw)
        .await
        .unwrap();
    let verified: serde_json::Value = app
        .get("/api/v1/audit/verify", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        verified["ok"], false,
        "a relabelled trail verified: {verified}"
    );
}

#[tokio::test]
async fn ctl_net_3_password_guessing_is_refused_with_429_and_retry_after() {
    let app = spawn_app_with(|c| {
        c.login_attempts_per_minute_per_account = 5;
        c.login_attempts_per_minute_per_ip = 30;
        // The limiter under test, without IAM-6's delays in front of it.
        c.login_lockout = false;
    })
    .await;
    let _admin = app.admin("acme").await;
    let login = |email: &str, password: &str| {
        app.client
            .post(format!("{}/api/v1/auth/login", app.address))
            .json(&serde_json::json!({"tenant": "acme", "email": email, "password": password}))
            .send()
    };
    // Five guesses at one account are answered (wrongly guessed: 401) …
    for _ in 0..5 {
        let res = login("admin@acme.test", "wrong password 123")
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // … the sixth is refused before any password is checked, even the right one.
    let started = Instant::now();
    let res = login("admin@acme.test", crate::helpers::PASSWORD)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "no hash was computed"
    );
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let problem: serde_json::Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "urn:strongroom:problem:too-many-requests");
    // Another account from the same office address is not held up.
    let res = login("someone@acme.test", "wrong password 123")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // One address guessing across many accounts runs into its own limit.
    let mut refused = 0;
    for i in 0..40 {
        let res = login(&format!("user{i}@acme.test"), "wrong password 123")
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert!(refused >= 10, "only {refused} of 40 refused");

    // Invitation acceptance is held to the same limits.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let res = app
            .client
            .post(format!("{}/api/v1/auth/invitations/accept", app.address))
            .json(
                &serde_json::json!({"token": "sr_inv_guess", "password": crate::helpers::PASSWORD}),
            )
            .send()
            .await
            .unwrap();
        statuses.push(res.status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn ctl_net_3_an_exempt_address_is_never_limited() {
    let app = spawn_app_with(|c| {
        c.login_attempts_per_minute_per_account = 2;
        c.rate_limit_exempt = vec!["127.0.0.0/8".into()];
        // The limiter under test, without IAM-6's delays in front of it.
        c.login_lockout = false;
    })
    .await;
    let _admin = app.admin("acme").await;
    for _ in 0..6 {
        let res = app
            .client
            .post(format!("{}/api/v1/auth/login", app.address))
            .json(&serde_json::json!({"tenant": "acme", "email": "admin@acme.test", "password": "wrong password 123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
}

/// Sends `head` and part of a body, then nothing; what comes back, and when.
async fn stall_after(address: &str, head: String, part: &[u8]) -> (Duration, String) {
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(part).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        // Until the server answers or closes.
        while let Ok(n) = slow.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test]
async fn ctl_net_5_a_body_that_stalls_is_cut_off_uploads_included() {
    let app = spawn_app_with(|c| {
        c.body_idle_timeout_seconds = 1;
        c.request_timeout_seconds = 30;
    })
    .await;
    let admin = app.admin("acme").await;
    let res = app
        .post(
            "/api/v1/collections",
            Some(&admin.access_token),
            serde_json::json!({"name": "assets", "fields": [
                {"name": "title", "type": "text"},
                {"name": "photos", "type": "file"}
            ]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let record: serde_json::Value = app
        .post(
            "/api/v1/collections/assets/records",
            Some(&admin.access_token),
            serde_json::json!({"title": "Pump 7"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let address = app.address.trim_start_matches("http://").to_owned();
    // A JSON body announced as 1000 bytes, of which 10 come.
    let (waited, answer) = stall_after(
        &address,
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n"
            .to_owned(),
        b"{\"tenant\":",
    )
    .await;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "answered after {waited:?}: {answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // An upload (no whole-request timeout: it streams) that stops sending.
    let head = format!(
        "POST /api/v1/collections/assets/records/{}/files/photos HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: 10000000\r\n\r\n",
        record["id"].as_str().unwrap(),
        admin.access_token
    );
    let (waited, answer) = stall_after(
        &address,
        head,
        b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\
          Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n",
    )
    .await;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "answered after {waited:?}: {answer}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    // Nothing of the stalled upload was kept.
    let files = app.count("SELECT COUNT(*) FROM files").await;
    assert_eq!(files, 0);
}

#[tokio::test]
async fn ctl_net_5_list_pages_are_bounded_by_bytes_as_well_as_rows() {
    let app = crate::helpers::spawn_app().await;
    let admin = app.admin("acme").await;
    let fields: Vec<_> = (0..15)
        .map(|i| serde_json::json!({"name": format!("f{i}"), "type": "text"}))
        .collect();
    let res = app
        .post(
            "/api/v1/collections",
            Some(&admin.access_token),
            serde_json::json!({"name": "big", "fields": fields}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // Six records of ~900 KB each: more than one 4 MiB page.
    for n in 0..6 {
        let body: serde_json::Map<String, serde_json::Value> = (0..15)
            .map(|i| {
                (
                    format!("f{i}"),
                    serde_json::json!(format!("{n}").repeat(60_000)),
                )
            })
            .collect();
        let res = app
            .post(
                "/api/v1/collections/big/records",
                Some(&admin.access_token),
                serde_json::Value::Object(body),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let walk = |first: String| {
        let app = &app;
        let token = admin.access_token.clone();
        async move {
            let mut pages = Vec::new();
            let mut path = first.clone();
            loop {
                let res = app.get(&path, &token).await;
                assert_eq!(res.status(), StatusCode::OK);
                let page: serde_json::Value = res.json().await.unwrap();
                pages.push(page["items"].as_array().unwrap().len());
                match page["next_cursor"].as_str() {
                    Some(cursor) => path = format!("{first}&cursor={cursor}"),
                    None => return pages,
                }
            }
        }
    };
    let pages = walk("/api/v1/collections/big/records?limit=50".to_owned()).await;
    assert!(pages.len() >= 2, "one page held them all: {pages:?}");
    assert!(pages[0] < 6 && pages[0] >= 4, "{pages:?}");
    assert_eq!(pages.iter().sum::<usize>(), 6, "{pages:?}");
    let pages = walk("/api/v1/audit?limit=500&action=record.create".to_owned()).await;
    assert!(pages.len() >= 2, "one audit page held them all: {pages:?}");
    assert_eq!(pages.iter().sum::<usize>(), 6, "{pages:?}");
}

#[tokio::test]
async fn ctl_net_5_more_filters_than_allowed_is_a_400_not_a_500() {
    let app = crate::helpers::spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let many: String = (0..2000).map(|_| "filter[status]=open&").collect();
    let res = app
        .get(
            &format!("/api/v1/collections/work_orders/records?{many}"),
            &admin.access_token,
        )
        .await;
    let problem = crate::helpers::problem(res, StatusCode::BAD_REQUEST).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("at most 20 filters"),
        "{problem}"
    );
    let twenty: String = (0..20).map(|_| "filter[status]=open&").collect();
    let res = app
        .get(
            &format!("/api/v1/collections/work_orders/records?{twenty}"),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn ctl_net_5_retention_purges_old_anonymous_access_log_rows() {
    let app = crate::helpers::spawn_app().await;
    for _ in 0..3 {
        let res = app.request(Method::GET, "/no-such-page", None, None).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    app.state.access_log.flush().await;
    let anonymous = "SELECT COUNT(*) FROM access_log WHERE tenant_id IS NULL";
    let before = app.count(anonymous).await;
    assert!(before >= 3);
    // Two of them are 100 days old now.
    let mut raw = app.raw().await;
    sqlx::query(
        "UPDATE access_log SET occurred_at = '2000-01-01T00:00:00.000000Z' WHERE id IN \
         (SELECT id FROM access_log WHERE tenant_id IS NULL AND path = '/no-such-page' \
          ORDER BY id LIMIT 2)",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    let summary = strongroom::audit::apply_retention(&app.state.store, 90)
        .await
        .unwrap();
    assert_eq!(summary.anonymous_rows_deleted, 2);
    assert_eq!(app.count(anonymous).await, before - 2);
    let again = strongroom::audit::apply_retention(&app.state.store, 90)
        .await
        .unwrap();
    assert_eq!(again.anonymous_rows_deleted, 0);
}

#[tokio::test]
async fn ctl_net_5_a_nul_in_a_path_query_or_body_is_refused_before_any_query() {
    use serde_json::{Value, json};
    let app = crate::helpers::spawn_app().await;
    let admin = app.admin("acme").await;
    // PostgreSQL cannot hold NUL in text: once, a NUL in a filter was a 500
    // there, and an export broke off mid-stream (found by schemathesis).
    for path in [
        "/api/v1/audit?target_type=a%00b",
        "/api/v1/audit/export?format=csv&target_id=%00",
        "/api/v1/access-log/export?path_prefix=%00x",
        "/api/v1/users/%00",
    ] {
        let res = app.get(path, &admin.access_token).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = res.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("NUL"), "{body}");
    }
    let res = app
        .post(
            "/api/v1/collections",
            Some(&admin.access_token),
            json!({"name": "tags", "fields": [
                {"name": "kind", "type": "select", "options": ["a\u{0}b"]}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let listed: Value = app
        .get("/api/v1/collections", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]), "{listed}");
    // The schema says so: free text excludes NUL.
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let params = doc["paths"]["/api/v1/audit"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let target = params.iter().find(|p| p["name"] == "target_type").unwrap();
    assert_eq!(target["schema"]["pattern"], "^[^\\u0000]*$");
}
