//! ENC-2, ENC-3, ENC-4: sensitive and personal values never reach the
//! database in clear; per-tenant keys rotate under load, can be the
//! tenant's own (BYOK) and revoked, and can be destroyed; the object stores
//! prove at start that they only receive ciphertext.

use crate::helpers::RunOff;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Session, TestApp, database_dump, is_postgres, problem, spawn_app, spawn_app_with,
};

async fn patients(app: &TestApp, admin: &Session) {
    let res = app
        .post(
            "/api/v1/collections",
            Some(&admin.access_token),
            json!({"name": "patients", "fields": [
                {"name": "name", "type": "text", "personal": true, "required": true},
                {"name": "born", "type": "datetime", "personal": true},
                {"name": "diagnosis", "type": "text", "sensitive": true},
                {"name": "scan", "type": "file", "sensitive": true},
                {"name": "ward", "type": "select", "options": ["a", "b"], "indexed": true}
            ]}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
}

async fn add_patient(app: &TestApp, admin: &Session, name: &str, diagnosis: &str) -> String {
    let res = app
        .post(
            "/api/v1/collections/patients/records",
            Some(&admin.access_token),
            json!({"name": name, "born": "1980-02-03T00:00:00Z", "diagnosis": diagnosis, "ward": "a"}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["diagnosis"], diagnosis,
        "the writer gets clear values back"
    );
    body["id"].as_str().unwrap().to_owned()
}

/// Uploads a PDF into the patient's sealed `scan` field; returns its info.
async fn attach_scan(app: &TestApp, admin: &Session, id: &str, pdf: &[u8]) -> Value {
    let path = format!("{}/files/scan", patient_path(id));
    let res = app
        .upload(&admin.access_token, &path, "s.pdf", "application/pdf", pdf)
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

fn patient_path(id: &str) -> String {
    format!("/api/v1/collections/patients/records/{id}")
}

async fn read(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.get(&patient_path(id), token).await
}

/// SQL that copies one record's stored `field` into another's.
fn copy_cell_sql(field: &str, from: &str, to: &str) -> String {
    if is_postgres() {
        format!(
            "UPDATE records SET data = jsonb_set(data, '{{{field}}}', \
             (SELECT data->'{field}' FROM records WHERE id = '{from}')) WHERE id = '{to}'"
        )
    } else {
        format!(
            "UPDATE records SET data = json_set(data, '$.{field}', \
             (SELECT json_extract(data, '$.{field}') FROM records WHERE id = '{from}')) WHERE id = '{to}'"
        )
    }
}

#[tokio::test]
async fn ctl_enc_2_sensitive_and_personal_values_are_ciphertext_everywhere_but_the_api() {
    let app = spawn_app().await;
    let admin = app.admin("clinic").await;
    patients(&app, &admin).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (name_a, diag_a) = (format!("Ivana Horvat {tag}"), format!("arrhythmia {tag}"));
    let (name_b, diag_b) = (format!("Petr Svoboda {tag}"), format!("asthma {tag}"));
    let a = add_patient(&app, &admin, &name_a, &diag_a).await;
    let b = add_patient(&app, &admin, &name_b, &diag_b).await;
    let res = app
        .patch(&patient_path(&a), &admin.access_token, json!({"ward": "b"}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .patch(
            &patient_path(&b),
            &admin.access_token,
            json!({"diagnosis": format!("copd {tag}")}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let scan = b"%PDF-1.4\nlung scan\n";
    attach_scan(&app, &admin, &b, scan).await;

    // Authorized reads see clear values.
    let body: Value = read(&app, &admin.access_token, &a)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (body["name"].as_str(), body["diagnosis"].as_str()),
        (Some(name_a.as_str()), Some(diag_a.as_str()))
    );
    assert_eq!(body["born"], "1980-02-03T00:00:00.000000Z");
    let list: Value = app
        .get("/api/v1/collections/patients/records", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    let listed_b = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == json!(b))
        .unwrap();
    assert_eq!(listed_b["diagnosis"], format!("copd {tag}"));
    assert_eq!(listed_b["scan"][0]["name"], "s.pdf");

    // Filtering on them is refused, and the refusal echoes nothing.
    for query in [
        format!("filter[diagnosis]=asthma%20{tag}"),
        format!("filter[name]=Ivana%20Horvat%20{tag}"),
    ] {
        let res = app
            .get(
                &format!("/api/v1/collections/patients/records?{query}"),
                &admin.access_token,
            )
            .await;
        let body = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(
            body["detail"].as_str().unwrap().contains("encrypted"),
            "{body}"
        );
        assert!(!body.to_string().contains(&tag), "{body}");
    }
    // Encrypted fields cannot be unique or indexed, nor change their flag.
    let res = app
        .post(
            "/api/v1/collections",
            Some(&admin.access_token),
            json!({"name": "p2", "fields": [{"name": "email", "type": "email", "personal": true, "unique": true}]}),
        )
        .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;

    // The audit trail shows redactions; nothing anywhere holds the values.
    let events = app.audit(&admin).await;
    let trail = serde_json::to_string(&events).unwrap();
    assert!(!trail.contains(&tag), "the audit trail holds a clear value");
    let update_a = events
        .iter()
        .find(|e| e["action"] == "record.update" && e["target"]["id"] == json!(a))
        .unwrap();
    // Untouched sealed values keep their ciphertext: not a change.
    assert_eq!(
        update_a["changes"],
        json!({"after": {"ward": "b"}, "before": {"ward": "a"}, "collection": "patients"})
    );
    let update_b = events
        .iter()
        .find(|e| e["action"] == "record.update" && e["target"]["id"] == json!(b))
        .unwrap();
    assert_eq!(
        update_b["changes"]["after"]["diagnosis"], "[redacted]",
        "{update_b}"
    );
    app.state.access_log.flush().await;
    let database = database_dump(&app.data_dir, &app.database_url).await;
    assert!(
        database.contains("sr1:"),
        "sealed values were written and scanned"
    );
    for clear in [
        &name_a,
        &diag_a,
        &name_b,
        &diag_b,
        &tag,
        &"lung scan".to_owned(),
    ] {
        assert!(
            !database.contains(clear.as_str()),
            "the database holds {clear:?} in clear"
        );
    }
    for (_, raw) in app.objects(0).await {
        assert!(!raw.windows(9).any(|w| w == b"lung scan"));
    }

    // A ciphertext moved to another row does not open there.
    let mut conn = app.raw().await;
    sqlx::query(&copy_cell_sql("diagnosis", &a, &b))
        .execute(&mut conn)
        .await
        .unwrap();
    let body = problem(
        read(&app, &admin.access_token, &b).await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    assert_eq!(body["type"], "urn:strongroom:problem:integrity-error");
    assert!(!body.to_string().contains(&tag));
    assert_eq!(
        read(&app, &admin.access_token, &a).await.status(),
        StatusCode::OK
    );
}

async fn key_status(app: &TestApp, admin: &Session) -> Value {
    let res = app.get("/api/v1/tenant/keys", &admin.access_token).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

#[tokio::test]
async fn ctl_enc_3_rotation_under_concurrent_writes_loses_nothing_and_old_data_stays_readable() {
    let app = spawn_app().await;
    let admin = app.admin("clinic").await;
    patients(&app, &admin).await;
    let mut expected = std::collections::HashMap::new();
    for i in 0..250 {
        let diagnosis = format!("diagnosis {i}");
        expected.insert(
            add_patient(&app, &admin, &format!("patient {i}"), &diagnosis).await,
            diagnosis,
        );
    }
    let first = expected.keys().next().unwrap().clone();
    let scan = b"%PDF-1.4\nscan before rotation\n";
    let file = attach_scan(&app, &admin, &first, scan).await;
    assert_eq!(key_status(&app, &admin).await["active_version"], 1);

    // Writers and readers keep going while two rotations run.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (app_address, token, client) = (
                app.address.clone(),
                admin.access_token.clone(),
                app.client.clone(),
            );
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..40 {
                    let diagnosis = format!("during rotation {w}-{i}");
                    let res = client
                        .post(format!("{app_address}/api/v1/collections/patients/records"))
                        .bearer_auth(&token)
                        .json(&json!({"name": format!("n{w}-{i}"), "diagnosis": diagnosis}))
                        .send()
                        .await
                        .unwrap();
                    let status = res.status();
                    let body: Value = res.json().await.unwrap();
                    assert_eq!(status, StatusCode::CREATED, "{body}");
                    written.push((body["id"].as_str().unwrap().to_owned(), diagnosis));
                }
                written
            })
        })
        .collect();
    for _ in 0..2 {
        rotate(&app, &admin).await;
        let res = read(&app, &admin.access_token, &first).await;
        assert_eq!(res.status(), StatusCode::OK, "reads work during rotation");
    }
    for writer in writers {
        expected.extend(writer.await.unwrap());
    }
    // Wait for the background re-encryption to finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = key_status(&app, &admin).await;
        let stale = app
            .count("SELECT COUNT(*) FROM records WHERE key_version < 3")
            .await
            + app
                .count("SELECT COUNT(*) FROM files WHERE key_version < 3")
                .await;
        let running = status["rotations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["state"] == "running");
        if stale == 0 && !running {
            assert_eq!(status["active_version"], 3, "{status}");
            let states: Vec<&str> = status["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["state"].as_str().unwrap())
                .collect();
            assert_eq!(states, ["retired", "retired", "active"]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation did not finish: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Nothing lost, everything readable, ETags unchanged by re-encryption.
    assert_eq!(
        app.count("SELECT COUNT(*) FROM records").await,
        expected.len() as i64
    );
    for (id, diagnosis) in &expected {
        let res = read(&app, &admin.access_token, id).await;
        assert_eq!(res.status(), StatusCode::OK);
        if id == &first {
            assert_eq!(res.headers()["etag"], "\"2\"");
        }
        let body: Value = res.json().await.unwrap();
        assert_eq!(&body["diagnosis"], diagnosis);
    }
    let res = app
        .get(
            &format!(
                "{}/files/{}",
                patient_path(&first),
                file["id"].as_str().unwrap()
            ),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), scan);

    // The CLI rotates too, with the same result.
    let out = app
        .cli()
        .await
        .args(["keys", "rotate", "--tenant", "clinic"])
        .run()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "{} records re-encrypted, 1 file keys rewrapped",
            expected.len()
        )),
        "{stdout}"
    );
    assert_eq!(key_status(&app, &admin).await["active_version"], 4);
    assert_eq!(
        read(&app, &admin.access_token, &first).await.status(),
        StatusCode::OK
    );
    // Two rotations at once: each starts, or loses cleanly with 409.
    let rotate = || {
        app.post(
            "/api/v1/tenant/keys/rotate",
            Some(&admin.access_token),
            json!({}),
        )
    };
    let (first_try, second_try) = tokio::join!(rotate(), rotate());
    let statuses = [first_try.status(), second_try.status()];
    assert!(statuses.contains(&StatusCode::ACCEPTED), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| [StatusCode::ACCEPTED, StatusCode::CONFLICT].contains(s)),
        "{statuses:?}"
    );
    // Only admins manage keys.
    let member = app.user(&admin, "nurse@clinic.test", "member").await;
    problem(
        app.get("/api/v1/tenant/keys", &member.access_token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

async fn rotate(app: &TestApp, admin: &Session) {
    let res = app
        .post(
            "/api/v1/tenant/keys/rotate",
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
}

/// The key version each new write seals with, as its journal entry keeps it
/// (re-sealing later writes new entries, never changes this one).
async fn sealed_with(app: &TestApp, id: &str) -> String {
    let after: String = sqlx::query_scalar(
        "SELECT after FROM journal WHERE entity = 'record' AND entity_id = $1 AND op = 'insert'",
    )
    .bind(id)
    .fetch_one(&mut app.raw().await)
    .await
    .unwrap();
    let after: Value = serde_json::from_str(&after).unwrap();
    let sealed = after["data"]["diagnosis"].as_str().unwrap().to_owned();
    sealed.split(':').take(2).collect::<Vec<_>>().join(":")
}

#[tokio::test]
async fn ctl_enc_3_every_write_after_a_rotation_uses_the_new_version() {
    let app = spawn_app().await;
    let admin = app.admin("clinic").await;
    patients(&app, &admin).await;
    let before = add_patient(&app, &admin, "before", "asthma").await;
    assert_eq!(sealed_with(&app, &before).await, "sr1:1");
    for version in 2..=3 {
        rotate(&app, &admin).await;
        let after = add_patient(&app, &admin, "after", "gout").await;
        assert_eq!(sealed_with(&app, &after).await, format!("sr1:{version}"));
    }
}

#[tokio::test]
async fn ctl_enc_3_a_revoked_tenant_key_locks_the_data_until_it_is_supplied_again() {
    let app = spawn_app().await;
    let admin = app.admin("clinic").await;
    patients(&app, &admin).await;
    let id = add_patient(&app, &admin, "Ana Kovač", "migraine").await;
    let scan = b"%PDF-1.4\nbyok scan\n";
    let file = attach_scan(&app, &admin, &id, scan).await;
    let file_path = format!(
        "{}/files/{}",
        patient_path(&id),
        file["id"].as_str().unwrap()
    );

    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.encode(strongroom::crypto::random_bytes::<32>());
    let put = |key: String| {
        let app = &app;
        let token = admin.access_token.clone();
        async move {
            app.request(
                Method::PUT,
                "/api/v1/tenant/keys/byok",
                Some(&token),
                Some(json!({"key": key})),
            )
            .await
        }
    };
    // Malformed keys are refused.
    problem(
        put(b64.encode([1u8; 16])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        put("not base64!".into()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    let res = put(key.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["change"], "activated");
    let fingerprint = body["fingerprint"].as_str().unwrap().to_owned();
    assert!(!body.to_string().contains(&key));
    let status = key_status(&app, &admin).await;
    assert_eq!(status["byok_fingerprint"], json!(fingerprint));
    assert!(
        status["versions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["wrapped_by"] == format!("byok:{fingerprint}"))
    );
    assert_eq!(
        read(&app, &admin.access_token, &id).await.status(),
        StatusCode::OK
    );

    // Revoked: the data is locked, new encrypted writes too.
    let res = app
        .delete("/api/v1/tenant/keys/byok", &admin.access_token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = problem(
        read(&app, &admin.access_token, &id).await,
        StatusCode::LOCKED,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains(&fingerprint),
        "{body}"
    );
    problem(
        app.get(&file_path, &admin.access_token).await,
        StatusCode::LOCKED,
    )
    .await;
    let res = app
        .post(
            "/api/v1/collections/patients/records",
            Some(&admin.access_token),
            json!({"name": "new"}),
        )
        .await;
    problem(res, StatusCode::LOCKED).await;
    assert_eq!(
        key_status(&app, &admin).await["revoked_fingerprint"],
        json!(fingerprint)
    );
    // Another key does not unlock it.
    let res = put(b64.encode(strongroom::crypto::random_bytes::<32>())).await;
    problem(res, StatusCode::CONFLICT).await;
    // The same key does.
    let res = put(key.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["change"], "restored");
    let body: Value = read(&app, &admin.access_token, &id)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["diagnosis"], "migraine");
    let res = app.get(&file_path, &admin.access_token).await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), scan);

    // The key never shows up in the trail, the access log or the database.
    let trail = serde_json::to_string(&app.audit(&admin).await).unwrap();
    assert!(trail.contains("keys.byok_revoke") && !trail.contains(&key));
    let log = serde_json::to_string(&app.access_log(&admin.access_token, "").await).unwrap();
    assert!(!log.contains(&key));
    assert!(
        !database_dump(&app.data_dir, &app.database_url)
            .await
            .contains(&key)
    );
    // Another tenant is untouched throughout.
    let other = app.admin("other").await;
    patients(&app, &other).await;
    add_patient(&app, &other, "x", "y").await;
}

#[tokio::test]
async fn ctl_enc_3_destroying_a_tenants_keys_makes_all_its_ciphertext_unreadable() {
    // Keys are destroyed by another process (the CLI): without a key cache
    // this server notices at once; with one, within key_cache_seconds.
    let app = spawn_app_with(|c| c.key_cache_seconds = 0).await;
    let admin = app.admin("clinic").await;
    patients(&app, &admin).await;
    let id = add_patient(&app, &admin, "Marek Dvořák", "fracture").await;
    let file = attach_scan(&app, &admin, &id, b"%PDF-1.4\nx-ray\n").await;
    let other = app.admin("other").await;
    patients(&app, &other).await;
    let kept = add_patient(&app, &other, "Kept", "fine").await;

    let out = app
        .cli()
        .await
        .args(["keys", "destroy", "--tenant", "clinic"])
        .run()
        .await
        .unwrap();
    assert!(!out.status.success(), "needs --yes");
    let out = app
        .cli()
        .await
        .args(["keys", "destroy", "--tenant", "clinic", "--yes"])
        .run()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    problem(read(&app, &admin.access_token, &id).await, StatusCode::GONE).await;
    let file_path = format!(
        "{}/files/{}",
        patient_path(&id),
        file["id"].as_str().unwrap()
    );
    problem(
        app.get(&file_path, &admin.access_token).await,
        StatusCode::GONE,
    )
    .await;
    let res = app
        .post(
            "/api/v1/collections/patients/records",
            Some(&admin.access_token),
            json!({"name": "new"}),
        )
        .await;
    problem(res, StatusCode::GONE).await;
    // No key material of the tenant is left: the database holds its wrapped
    // keys no more, and without them the sealed values and objects that
    // remain (in the database, the stores and any backup) cannot be opened.
    let tenant = &admin.tenant_id;
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM tenant_keys WHERE tenant_id = '{tenant}' AND wrapped IS NOT NULL"
        ))
        .await,
        0
    );
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM tenant_byok WHERE tenant_id = '{tenant}'"
        ))
        .await,
        0
    );
    assert!(
        app.count(&format!(
            "SELECT COUNT(*) FROM tenant_keys WHERE tenant_id = '{tenant}'"
        ))
        .await
            >= 1
    );
    // The other tenant is unaffected.
    assert_eq!(
        read(&app, &other.access_token, &kept).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn ctl_enc_3_rotating_the_master_key_rewraps_keys_and_leaves_the_data_alone() {
    let mut app = spawn_app().await;
    let admin = app.admin("clinic").await;
    patients(&app, &admin).await;
    let id = add_patient(&app, &admin, "Lea Novak", "tinnitus").await;
    let scan = b"%PDF-1.4\nbefore the master key changed\n";
    let file = attach_scan(&app, &admin, &id, scan).await;
    let other = app.admin("other").await;
    use base64::Engine;
    let tenant_key =
        base64::engine::general_purpose::STANDARD.encode(strongroom::crypto::random_bytes::<32>());
    let res = app
        .request(
            Method::PUT,
            "/api/v1/tenant/keys/byok",
            Some(&other.access_token),
            Some(json!({"key": tenant_key})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    patients(&app, &other).await;
    let other_id = add_patient(&app, &other, "Byok Patient", "kept").await;
    let out = app
        .cli()
        .await
        .args(["audit", "checkpoint"])
        .run()
        .await
        .unwrap();
    assert!(out.status.success());

    let data_sql = match is_postgres() {
        true => "SELECT data::text FROM records ORDER BY id",
        false => "SELECT data FROM records ORDER BY id",
    };
    let mut conn = app.raw().await;
    let before: Vec<String> = sqlx::query_scalar(data_sql)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let key_file = app.data_dir.join("master.key");
    let old_key = std::fs::read(&key_file).unwrap();

    // The rotation is an offline operation: the server holds the old key.
    app.stop_server().await;
    let out = app
        .cli()
        .await
        .args(["keys", "rotate-master"])
        .run()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("clinic: 1 keys rewrapped, 1 audit checkpoints re-signed"),
        "{stdout}"
    );
    assert!(stdout.contains("other: 1 keys rewrapped"), "{stdout}");

    // A new key file, no leftover; the sealed data is byte for byte the same.
    assert_ne!(std::fs::read(&key_file).unwrap(), old_key);
    assert!(!app.data_dir.join("master.key.next").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let after: Vec<String> = sqlx::query_scalar(data_sql)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(before, after);

    // A server on the new key reads everything; the trail still verifies.
    let env = app.store_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = crate::helpers::ServerProcess::start_with_env(
        &app.data_dir,
        &app.database_url,
        "warn",
        &env,
    )
    .await;
    let client = crate::helpers::http_client();
    let login = |tenant: &'static str, email: &'static str| {
        let (client, address) = (client.clone(), server.address.clone());
        async move {
            let res = client
                .post(format!("{address}/api/v1/auth/login"))
                .json(&json!({"tenant": tenant, "email": email, "password": crate::helpers::PASSWORD}))
                .send()
                .await
                .unwrap();
            res.json::<Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let token = login("clinic", "admin@clinic.test").await;
    let get = |path: String, token: String| {
        let (client, address) = (client.clone(), server.address.clone());
        async move {
            client
                .get(format!("{address}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let body: Value = get(patient_path(&id), token.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["diagnosis"], "tinnitus");
    let res = get(
        format!(
            "{}/files/{}",
            patient_path(&id),
            file["id"].as_str().unwrap()
        ),
        token.clone(),
    )
    .await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), scan);
    let other_token = login("other", "admin@other.test").await;
    let body: Value = get(patient_path(&other_id), other_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["diagnosis"], "kept",
        "the tenant's own key still wraps its data keys"
    );
    server.stop().await;
    let out = app
        .cli()
        .await
        .args(["audit", "verify"])
        .run()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn ctl_enc_4_every_store_proves_it_receives_only_ciphertext_or_the_server_does_not_start() {
    // A store that cannot be written fails closed.
    let dir = crate::helpers::temp_dir("ro");
    std::fs::create_dir_all(dir.join("objects")).unwrap();
    let url = crate::helpers::fresh_database(&dir).await;
    let out = crate::helpers::cli(&dir, &url)
        .args(["migrate"])
        .env(
            "STRONGROOM_OBJECT_STORE_URL",
            "file:///proc/strongroom-cannot-write-here",
        )
        .run()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("object storage"), "{stderr}");

    // A healthy primary and replica both pass, and no canary is left.
    let replica = crate::helpers::temp_dir("replica");
    let replica_url = format!("file://{}", replica.display());
    let app = spawn_app_with(|c| c.object_store_replica_url = Some(replica_url.clone())).await;
    assert!(app.objects(0).await.is_empty());
    assert!(app.objects(1).await.is_empty());
    let server = crate::helpers::ServerProcess::start_with_env(
        &app.data_dir,
        &app.database_url,
        "info",
        &[("STRONGROOM_OBJECT_STORE_REPLICA_URL", &replica_url)],
    )
    .await;
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert_eq!(
        log.matches("object store self-test passed").count(),
        2,
        "{log}"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(replica);
    let _ = std::fs::remove_dir_all(dir);
}

/// A data key's expanded schedule (ring's, boxed by `DataKey`) starts with
/// the key itself; when the key is dropped, the memory handed back to the
/// allocator no longer holds it. The watch also counts the frees it saw, so
/// the test cannot pass by watching the wrong blocks.
#[test]
fn ctl_enc_3_a_dropped_data_key_leaves_no_key_bytes_in_freed_memory() {
    use strongroom::crypto::aead::{DataKey, generate_key};
    let size = std::mem::size_of::<ring::aead::LessSafeKey>();
    let bytes = generate_key();
    let (freed, found) = crate::freed::watch(size, &bytes, || {
        let key = DataKey::new(&bytes);
        let sealed = key.seal(b"place", b"value");
        assert_eq!(key.open(b"place", &sealed).unwrap().as_slice(), b"value");
        drop(key);
    });
    assert!(freed >= 1, "no key schedule was freed while watching");
    assert_eq!(
        found, 0,
        "{found} of {freed} freed key schedules still held the key"
    );
}
