//! Upgrades keep the data: a database written at an earlier schema version
//! (ids and times as text on PostgreSQL) is migrated forward by the next
//! start, and everything reads back the same, files included, with the
//! audit chain still verifying (its canonical encoding did not change).

use crate::helpers::RunOff;
use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection, Row};

use crate::helpers::{CREATE_ACME, PASSWORD, ServerProcess, cli, fresh_database, send, temp_dir};

/// The schema before this release's migrations: before the job-node
/// columns on both backends, and before native types on PostgreSQL.
fn earlier_schema() -> &'static str {
    if crate::helpers::is_postgres() {
        "3"
    } else {
        "4"
    }
}

/// The data type of `table.column` as the database reports it.
async fn column_type(url: &str, table: &str, column: &str) -> String {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(url).await.unwrap();
    let row = sqlx::query(
        "SELECT data_type FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
    )
    .bind(table)
    .bind(column)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let kind: String = row.get(0);
    conn.close().await.unwrap();
    kind
}

#[tokio::test]
async fn data_written_before_an_upgrade_reads_back_whole_after_it() {
    let dir = temp_dir("upgrade");
    let url = fresh_database(&dir).await;
    let until = [("STRONGROOM_MIGRATE_UNTIL", earlier_schema())];
    let old = ServerProcess::start_with_env(&dir, &url, "warn", &until).await;
    let created = cli(&dir, &url)
        .envs(until)
        .args(CREATE_ACME)
        .run()
        .await
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created: Value = serde_json::from_str(
        String::from_utf8_lossy(&created.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let client = crate::helpers::http_client();
    let (_, accepted) = send(
        client
            .post(format!("{}/api/v1/auth/invitations/accept", old.address))
            .json(&json!({"token": created["invitation_token"], "password": PASSWORD})),
    )
    .await;
    let token = accepted["access_token"].as_str().unwrap().to_owned();
    let api = |address: &str, path: &str| format!("{address}/api/v1{path}");
    let (status, body) = send(
        client
            .post(api(&old.address, "/collections"))
            .bearer_auth(&token)
            .json(&json!({"name": "patients", "fields": [
                {"name": "name", "type": "text", "personal": true, "required": true},
                {"name": "ward", "type": "select", "options": ["a", "b"], "indexed": true},
                {"name": "scan", "type": "file", "sensitive": true}
            ]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut before = Vec::new();
    for (name, ward) in [("Ana Kovač", "a"), ("Petr Novák", "b"), ("Iva Horvat", "a")] {
        let (status, body) = send(
            client
                .post(api(&old.address, "/collections/patients/records"))
                .bearer_auth(&token)
                .json(&json!({"name": name, "ward": ward})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        before.push(body);
    }
    let first = before[0]["id"].as_str().unwrap().to_owned();
    let (status, _) = send(
        client
            .patch(api(
                &old.address,
                &format!("/collections/patients/records/{first}"),
            ))
            .bearer_auth(&token)
            .json(&json!({"ward": "b"})),
    )
    .await;
    assert_eq!(status, 200);
    let scan = b"%PDF-1.4\nwritten before the upgrade\n".repeat(50);
    let (content_type, upload) = crate::helpers::multipart("s.pdf", "application/pdf", &scan);
    let (status, file) = send(
        client
            .post(api(
                &old.address,
                &format!("/collections/patients/records/{first}/files/scan"),
            ))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(upload),
    )
    .await;
    assert_eq!(status, 201, "{file}");
    // As the old server last showed them (the upload moved the version on).
    for record in before.iter_mut() {
        let id = record["id"].as_str().unwrap().to_owned();
        let (status, body) = send(
            client
                .get(api(
                    &old.address,
                    &format!("/collections/patients/records/{id}"),
                ))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        *record = body;
    }
    if crate::helpers::is_postgres() {
        assert_eq!(column_type(&url, "records", "id").await, "text");
        assert_eq!(
            column_type(&url, "audit_events", "occurred_at").await,
            "text"
        );
    }
    old.stop().await;

    // The next start migrates; the same session, data, file and trail.
    let new = ServerProcess::start(&dir, &url, "warn").await;
    if crate::helpers::is_postgres() {
        assert_eq!(column_type(&url, "records", "id").await, "uuid");
        assert_eq!(
            column_type(&url, "audit_events", "occurred_at").await,
            "timestamp with time zone"
        );
        assert_eq!(column_type(&url, "collections", "fields").await, "jsonb");
    }
    let (status, listed) = send(
        client
            .get(api(
                &new.address,
                "/collections/patients/records?sort=created_at",
            ))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(
        status, 200,
        "the session made before the upgrade still works: {listed}"
    );
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for record in &before {
        let id = record["id"].as_str().unwrap();
        let (status, after) = send(
            client
                .get(api(
                    &new.address,
                    &format!("/collections/patients/records/{id}"),
                ))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(status, 200, "{after}");
        assert_eq!(&after, record, "{id} reads back the same");
    }
    let (status, filtered) = send(
        client
            .get(api(
                &new.address,
                "/collections/patients/records?filter%5Bward%5D=a",
            ))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 200, "{filtered}");
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1, "{filtered}");
    let res = client
        .get(api(
            &new.address,
            &format!(
                "/collections/patients/records/{first}/files/{}",
                file["id"].as_str().unwrap()
            ),
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), scan.as_slice());
    // Writing goes on, numbered after the old events.
    let (status, body) = send(
        client
            .post(api(&new.address, "/collections/patients/records"))
            .bearer_auth(&token)
            .json(&json!({"name": "after the upgrade", "ward": "a"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    new.stop().await;
    let out = cli(&dir, &url)
        .args(["audit", "verify", "--tenant", "acme"])
        .run()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("ok ("),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&dir, &url)
        .args(["files", "verify"])
        .run()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("1 good"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
