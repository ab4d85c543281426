use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{CREATE_ACME, PASSWORD, ServerProcess, cli_json, fresh_database, temp_dir};

/// Creates a tenant with the CLI, accepts the invitation against `server`
/// and returns an access token.
pub async fn tenant_admin_token(
    server: &ServerProcess,
    dir: &std::path::Path,
    url: &str,
) -> (String, String) {
    let created = cli_json(dir, url, CREATE_ACME);
    let invitation = created["invitation_token"].as_str().unwrap().to_owned();
    let res: Value = crate::helpers::http_client()
        .post(format!("{}/api/v1/auth/invitations/accept", server.address))
        .json(&json!({"token": invitation, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (res["access_token"].as_str().unwrap().to_owned(), invitation)
}

#[tokio::test]
async fn ctl_bak_7_no_acknowledged_write_is_lost_when_the_server_is_killed() {
    let dir = temp_dir("kill9");
    let url = fresh_database(&dir).await;
    let mut server = ServerProcess::start(&dir, &url, "warn").await;
    let (token, _) = tenant_admin_token(&server, &dir, &url).await;
    let client = crate::helpers::http_client();
    let res = client
        .post(format!("{}/api/v1/collections", server.address))
        .bearer_auth(&token)
        .json(&json!({"name": "work_orders", "fields": [{"name": "title", "type": "text", "required": true}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // A burst of 200 creates, 32 in flight at a time (enough for the writer
    // to commit them in groups; all 200 at once could wait out the
    // PostgreSQL pool's 10 s acquire timeout on a slow machine, a 503 that
    // says nothing about durability); collect every acknowledgement.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, address, token) = (client.clone(), server.address.clone(), token.clone());
        let in_flight = in_flight.clone();
        burst.spawn(async move {
            let _turn = in_flight.acquire_owned().await.map_err(|e| e.to_string())?;
            let res = client
                .post(format!("{address}/api/v1/collections/work_orders/records"))
                .bearer_auth(&token)
                .json(&json!({"title": format!("burst {i}")}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = res.status();
            let body = res.text().await.map_err(|e| e.to_string())?;
            let body: Value =
                serde_json::from_str(&body).map_err(|_| format!("{status}: {body}"))?;
            match (status.as_u16(), body["id"].as_str()) {
                (201, Some(id)) => Ok(id.to_owned()),
                _ => Err(format!("{status}: {body}")),
            }
        });
    }
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    while let Some(done) = burst.join_next().await {
        match done.unwrap() {
            Ok(id) => acknowledged.push(id),
            Err(why) => refused.push(why),
        }
    }
    assert_eq!(
        acknowledged.len(),
        200,
        "every create was acknowledged; not: {refused:?}"
    );
    // SIGKILL right after the last acknowledgement: no chance to flush anything.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let server = ServerProcess::start(&dir, &url, "warn").await;
    let (token, _) = {
        // The old access token's session is still valid; log in again anyway.
        let res: Value = client
            .post(format!("{}/api/v1/auth/login", server.address))
            .json(&json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (res["access_token"].as_str().unwrap().to_owned(), ())
    };
    let mut found = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/api/v1/collections/work_orders/records?limit=200",
            server.address
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            found.insert(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !found.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
}

#[tokio::test]
async fn the_server_shuts_down_gracefully_on_sigterm() {
    let dir = temp_dir("sigterm");
    let url = fresh_database(&dir).await;
    let mut server = ServerProcess::start(&dir, &url, "info").await;
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("shutdown signal received"), "{log}");
}

/// BAK-7: `serve` under a service manager: `READY=1` once it listens,
/// `WATCHDOG=1` at half the asked interval while the database answers,
/// `STOPPING=1` on SIGTERM; a start after `kill -9` says the last run did
/// not stop cleanly and what it checked. The shipped unit asks systemd to
/// restart it on exit and on a missed watchdog.
#[tokio::test]
async fn ctl_bak_7_serve_speaks_sd_notify_and_reports_an_unclean_stop() {
    use crate::helpers::RunOff;
    use std::os::unix::net::UnixDatagram;
    let data_dir = crate::helpers::temp_dir("notify");
    let database_url = crate::helpers::fresh_database(&data_dir).await;
    let socket_path = data_dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let socket_env = socket_path.to_string_lossy().into_owned();
    let env = [
        ("NOTIFY_SOCKET", socket_env.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let server =
        crate::helpers::ServerProcess::start_with_env(&data_dir, &database_url, "info", &env).await;
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    while messages
        .iter()
        .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
        .count()
        < 2
    {
        let n = socket.recv(&mut buf).expect("a message from the server");
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        messages[0].starts_with("READY=1\nSTATUS=listening on 127.0.0.1:"),
        "{messages:?}"
    );
    // While it runs, a second shipper from the CLI is refused.
    let out = crate::helpers::cli(&data_dir, &database_url)
        .args(["backup", "ship"])
        .run()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a server runs on this data dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
    let stopping = loop {
        let n = socket.recv(&mut buf).expect("a message from the server");
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message != "WATCHDOG=1" {
            break message;
        }
    };
    assert_eq!(stopping, "STOPPING=1");

    // A clean stop leaves nothing to report; kill -9 does.
    let server = crate::helpers::ServerProcess::start(&data_dir, &database_url, "info").await;
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(!log.contains("did not stop cleanly"), "{log}");
    let pid = server.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let server = crate::helpers::ServerProcess::start(&data_dir, &database_url, "info").await;
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("did not stop cleanly"), "{log}");
    if !crate::helpers::is_postgres() {
        assert!(log.contains("quick_check: ok"), "{log}");
    }
    server.stop().await;

    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/strongroom.service"
    ))
    .unwrap();
    for line in [
        "Type=notify",
        "Restart=always",
        "WatchdogSec=30",
        "NotifyAccess=main",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
}
