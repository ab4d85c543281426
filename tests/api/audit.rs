use crate::helpers::RunOff;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn ctl_aud_1_every_change_writes_an_audit_event_with_every_field() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let res = app
        .post(
            "/api/v1/collections/work_orders/records",
            Some(&admin.access_token),
            json!({"title": "Pump", "priority": 1}),
        )
        .await;
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let record: Value = res.json().await.unwrap();
    let id = record["id"].as_str().unwrap();
    app.patch(
        &format!("/api/v1/collections/work_orders/records/{id}"),
        &admin.access_token,
        json!({"priority": 5}),
    )
    .await;

    let events = app.audit(&admin).await;
    let create = events
        .iter()
        .find(|e| e["action"] == "record.create")
        .unwrap();
    for key in [
        "id",
        "seq",
        "occurred_at",
        "action",
        "outcome",
        "actor",
        "ip",
        "user_agent",
        "request_id",
        "app_version",
        "target",
        "changes",
    ] {
        assert!(
            !create[key].is_null(),
            "audit event without {key}: {create}"
        );
    }
    assert_eq!(create["outcome"], "success");
    assert_eq!(
        create["actor"],
        json!({"type": "user", "id": admin.user_id, "email": admin.email})
    );
    assert_eq!(create["ip"], "127.0.0.1");
    assert_eq!(create["user_agent"], "strongroom-tests/1");
    assert_eq!(create["request_id"], request_id.as_str());
    assert_eq!(create["app_version"], strongroom::VERSION);
    assert_eq!(create["target"], json!({"type": "record", "id": id}));
    assert_eq!(
        create["changes"],
        json!({"before": null, "after": {"title": "Pump", "priority": 1},
               "collection": "work_orders"})
    );
    // An update's diff holds only what changed.
    let update = events
        .iter()
        .find(|e| e["action"] == "record.update")
        .unwrap();
    assert_eq!(
        update["changes"],
        json!({"before": {"priority": 1}, "after": {"priority": 5}, "collection": "work_orders"})
    );
    // Every kind of change so far is there.
    for action in [
        "tenant.create",
        "auth.invitation.accept",
        "collection.create",
        "record.create",
        "record.update",
    ] {
        assert!(
            events.iter().any(|e| e["action"] == action),
            "no {action} event"
        );
    }
}

#[tokio::test]
async fn ctl_aud_3_sensitive_values_never_reach_the_audit_trail_in_clear() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let record = app
        .create_order(
            &admin,
            json!({"title": "x", "notes": "door code 4711-SECRET"}),
        )
        .await;
    let id = record["id"].as_str().unwrap();
    assert_eq!(
        record["notes"], "door code 4711-SECRET",
        "authorised readers see the value"
    );
    app.patch(
        &format!("/api/v1/collections/work_orders/records/{id}"),
        &admin.access_token,
        json!({"notes": "now 9999-SECRET"}),
    )
    .await;
    app.delete(
        &format!("/api/v1/collections/work_orders/records/{id}"),
        &admin.access_token,
    )
    .await;
    let events = app.audit(&admin).await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains("4711-SECRET") && !text.contains("9999-SECRET"),
        "{text}"
    );
    let update = events
        .iter()
        .find(|e| e["action"] == "record.update")
        .unwrap();
    assert_eq!(update["changes"]["after"]["notes"], "[redacted]");
    assert_eq!(update["changes"]["sensitive"]["notes"]["changed"], true);
}

#[tokio::test]
async fn the_audit_trail_pages_newest_first_and_is_for_admins_only() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    for i in 0..5 {
        app.create_order(&admin, json!({"title": format!("r{i}")}))
            .await;
    }
    let page: Value = app
        .get("/api/v1/audit?limit=2", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    let seqs: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2);
    assert!(seqs[0] > seqs[1]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next: Value = app
        .get(
            &format!("/api/v1/audit?limit=2&cursor={cursor}"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["items"][0]["seq"].as_i64().unwrap(), seqs[1] - 1);
    problem(
        app.get("/api/v1/audit?limit=0", &admin.access_token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.get("/api/v1/audit?cursor=x", &admin.access_token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let member = app.user(&admin, "m@acme.test", "member").await;
    problem(
        app.get("/api/v1/audit", &member.access_token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

/// A trail of 13 events for tenant `acme`, with a signed checkpoint at 11.
async fn trail() -> (crate::helpers::TestApp, crate::helpers::Session) {
    let app = spawn_app().await;
    let admin = app.admin("acme").await; // 1 tenant.create, 2 invitation.accept
    app.work_orders(&admin).await; // 3
    for i in 0..8 {
        app.create_order(&admin, json!({"title": format!("r{i}")}))
            .await; // 4..=11
    }
    let signed = strongroom::audit::checkpoint_all(
        &app.state.store,
        app.state.keyring.checkpoint_signing_key(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(signed, 1);
    for i in 8..10 {
        app.create_order(&admin, json!({"title": format!("r{i}")}))
            .await; // 12, 13
    }
    (app, admin)
}

async fn verify(app: &crate::helpers::TestApp, admin: &crate::helpers::Session) -> Value {
    let res = app.get("/api/v1/audit/verify", &admin.access_token).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

async fn tamper(app: &crate::helpers::TestApp, statements: &[&str]) {
    let mut conn = app.raw().await;
    for sql in statements {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
}

#[tokio::test]
async fn ctl_aud_7_an_untouched_trail_verifies_with_its_signed_checkpoints() {
    let (app, admin) = trail().await;
    let report = verify(&app, &admin).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["events_checked"], 13);
    let principal = strongroom::identity::authenticate(
        &app.state.store,
        app.state.keyring.token_verifying_key(),
        &secrecy::SecretString::from(admin.access_token.clone()),
    )
    .await
    .unwrap();
    let key = app.state.keyring.checkpoint_signing_key().verifying_key();
    let halves = strongroom::audit::verify_in_halves(&app.state.store, principal.scope(), &key)
        .await
        .unwrap();
    assert!(halves.ok, "{halves:?}");
    assert_eq!(halves.events_checked, 13);
    assert_eq!(halves.first_seq, 1);
    assert_eq!(report["checkpoints_checked"], 1);
    // The CLI agrees and exits zero.
    let out = crate::helpers::cli(&app.data_dir, &app.database_url)
        .args(["audit", "verify", "--tenant", "acme"])
        .run()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (13 events"));
    // The checkpoint key is public; the checkpoint's signature checks out with it.
    let key: Value = app
        .client
        .get(format!("{}/api/v1/audit/checkpoint-key", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key["algorithm"], "Ed25519");
}

#[tokio::test]
async fn ctl_aud_7_tampering_by_direct_sql_is_detected_at_the_right_seq() {
    let cases: Vec<(&str, Vec<&str>, i64)> = vec![
        (
            "modify one event",
            vec!["UPDATE audit_events SET action = 'record.read' WHERE seq = 5"],
            5,
        ),
        (
            "modify an actor",
            vec!["UPDATE audit_events SET actor_email = 'someone@else.test' WHERE seq = 12"],
            12,
        ),
        (
            "delete one event",
            vec!["DELETE FROM audit_events WHERE seq = 6"],
            6,
        ),
        (
            "insert one event",
            vec![
                "INSERT INTO audit_events (id, tenant_id, seq, occurred_at, action, outcome, actor_type, request_id, app_version, prev_hash, hash) \
                 SELECT '00000000-0000-4000-8000-00000000f0f0', tenant_id, 14, occurred_at, 'record.delete', outcome, actor_type, request_id, app_version, hash, hash FROM audit_events WHERE seq = 13",
            ],
            14,
        ),
        (
            "swap two events",
            vec![
                "UPDATE audit_events SET seq = -1 WHERE seq = 4",
                "UPDATE audit_events SET seq = 4 WHERE seq = 7",
                "UPDATE audit_events SET seq = 7 WHERE seq = -1",
            ],
            4,
        ),
        (
            "truncate the tail and rewind the counters",
            vec![
                "DELETE FROM audit_events WHERE seq >= 10",
                "UPDATE tenant_sequences SET audit_seq = 9, audit_head = (SELECT hash FROM audit_events WHERE seq = 9)",
            ],
            10,
        ),
    ];
    for (what, statements, bad_seq) in cases {
        let (app, admin) = trail().await;
        tamper(&app, &statements).await;
        let report = verify(&app, &admin).await;
        assert_eq!(report["ok"], false, "{what}: {report}");
        assert_eq!(report["first_bad_seq"], bad_seq, "{what}: {report}");
        // The two-halves walk (long trails on SQLite) finds the same seq.
        let principal = strongroom::identity::authenticate(
            &app.state.store,
            app.state.keyring.token_verifying_key(),
            &secrecy::SecretString::from(admin.access_token.clone()),
        )
        .await
        .unwrap();
        let key = app.state.keyring.checkpoint_signing_key().verifying_key();
        let halves = strongroom::audit::verify_in_halves(&app.state.store, principal.scope(), &key)
            .await
            .unwrap();
        assert!(!halves.ok, "{what} (halves): {halves:?}");
        assert_eq!(
            halves.first_bad_seq,
            Some(bad_seq),
            "{what} (halves): {halves:?}"
        );
        let out = crate::helpers::cli(&app.data_dir, &app.database_url)
            .args(["audit", "verify"])
            .run()
            .await
            .unwrap();
        assert!(!out.status.success(), "{what}: CLI exited 0");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("TAMPERED at seq {bad_seq}")),
            "{what}: {stdout}"
        );
    }
}

#[tokio::test]
async fn ctl_aud_7_a_rewritten_chain_with_recomputed_hashes_fails_its_signed_checkpoint() {
    use sqlx::Row;
    use strongroom::audit::chain::{Chained, from_hex, to_hex};
    let (app, admin) = trail().await;
    // The attacker edits event 5 and recomputes every hash after it.
    let mut conn = app.raw().await;
    sqlx::query("UPDATE audit_events SET action = 'record.read' WHERE seq = 5")
        .execute(&mut conn)
        .await
        .unwrap();
    let rows = sqlx::query(&format!(
        "SELECT CAST(id AS TEXT), CAST(tenant_id AS TEXT), seq, {}, action, outcome, actor_type, actor_id, actor_email, ip, user_agent, \
         request_id, app_version, target_type, target_id, changes, prev_hash, environment FROM audit_events \
         WHERE seq >= 5 ORDER BY seq",
        crate::helpers::stored_time("occurred_at")
    ))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut prev = from_hex(rows[0].get::<&str, _>(16)).unwrap();
    for row in &rows {
        let seq: i64 = row.get(2);
        let hash = Chained {
            id: row.get(0),
            tenant_id: row.get(1),
            seq,
            occurred_at: row.get(3),
            action: row.get(4),
            outcome: row.get(5),
            actor_type: row.get(6),
            actor_id: row.get(7),
            actor_email: row.get(8),
            ip: row.get(9),
            user_agent: row.get(10),
            request_id: row.get(11),
            app_version: row.get(12),
            target_type: row.get(13),
            target_id: row.get(14),
            changes: row.get(15),
            environment: row.get(17),
        }
        .hash(&prev);
        sqlx::query("UPDATE audit_events SET prev_hash = $1, hash = $2 WHERE seq = $3")
            .bind(to_hex(&prev))
            .bind(to_hex(&hash))
            .bind(seq)
            .execute(&mut conn)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE tenant_sequences SET audit_head = $1")
        .bind(to_hex(&prev))
        .execute(&mut conn)
        .await
        .unwrap();
    let report = verify(&app, &admin).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(
        report["first_bad_seq"], 11,
        "the checkpoint at 11 no longer matches: {report}"
    );
    // A forged checkpoint to match does not help: its signature is wrong.
    sqlx::query(
        "UPDATE audit_checkpoints SET hash = (SELECT hash FROM audit_events WHERE seq = 11)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let report = verify(&app, &admin).await;
    assert_eq!(report["first_bad_seq"], 11);
    assert!(
        report["problem"]
            .as_str()
            .unwrap()
            .contains("invalid signature"),
        "{report}"
    );
}

#[tokio::test]
async fn ctl_aud_4_the_trail_filters_by_time_actor_action_target_and_outcome() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let member = app.user(&admin, "member@acme.test", "member").await;
    let record = app
        .create_order(&member, json!({"title": "by member"}))
        .await;
    app.create_order(&admin, json!({"title": "by admin"})).await;
    app.post(
        "/api/v1/users",
        Some(&member.access_token),
        json!({"email": "x@acme.test", "role": "admin"}),
    )
    .await;
    let get = |q: &'static str| {
        let app = &app;
        let token = admin.access_token.clone();
        async move {
            let body: Value = app
                .get(&format!("/api/v1/audit?{q}"), &token)
                .await
                .json()
                .await
                .unwrap();
            body["items"].as_array().unwrap().clone()
        }
    };
    let creates = get("action=record.create").await;
    assert_eq!(creates.len(), 2);
    let mine = get("action=record.create&actor=member@acme.test").await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["target"]["id"], record["id"]);
    let by_id = app
        .get(
            &format!("/api/v1/audit?actor={}&outcome=denied", member.user_id),
            &admin.access_token,
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(by_id["items"][0]["action"], "user.create");
    let target = app
        .get(
            &format!(
                "/api/v1/audit?target_type=record&target_id={}",
                record["id"].as_str().unwrap()
            ),
            &admin.access_token,
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(target["items"].as_array().unwrap().len(), 1);
    assert!(get("from=2999-01-01T00:00:00Z").await.is_empty());
    assert!(get("to=2000-01-01T00:00:00Z").await.is_empty());
    assert_eq!(
        get("from=2000-01-01T00:00:00%2B02:00&action=record.create")
            .await
            .len(),
        2
    );
    for bad in ["outcome=maybe", "from=yesterday", "colour=red", "limit=x"] {
        problem(
            app.get(&format!("/api/v1/audit?{bad}"), &admin.access_token)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
}

#[tokio::test]
async fn ctl_aud_4_exports_in_jsonl_and_csv_round_trip_the_list_api_and_are_audited() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    app.create_order(&admin, json!({"title": "comma, \"quotes\"\nand newline"}))
        .await;
    app.create_order(&admin, json!({"title": "=HYPERLINK(\"evil\")"}))
        .await;
    let mut listed = app.audit(&admin).await;
    listed.reverse(); // exports run oldest first
    let jsonl = app
        .get("/api/v1/audit/export?format=jsonl", &admin.access_token)
        .await;
    assert_eq!(jsonl.status(), StatusCode::OK);
    let exported: Vec<Value> = jsonl
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        &exported[..listed.len()],
        &listed[..],
        "JSON Lines export equals the list API"
    );
    assert_eq!(
        exported[listed.len()]["action"],
        "audit.export",
        "the export itself is audited"
    );

    let csv = app
        .get(
            "/api/v1/audit/export?format=csv&action=record.create",
            &admin.access_token,
        )
        .await;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let rows = crate::access_log::parse_csv(&csv.text().await.unwrap());
    let header = &rows[0];
    for column in [
        "occurred_at",
        "action",
        "outcome",
        "actor_email",
        "ip",
        "user_agent",
        "target_type",
        "target_id",
        "app_version",
        "request_id",
    ] {
        assert!(header.contains(&column.to_owned()), "CSV lacks {column}");
    }
    let col = |name: &str| header.iter().position(|c| c == name).unwrap();
    let creates: Vec<&Value> = listed
        .iter()
        .filter(|e| e["action"] == "record.create")
        .collect();
    assert_eq!(rows.len() - 1, creates.len());
    for (row, event) in rows[1..].iter().zip(creates) {
        assert_eq!(row[col("seq")], event["seq"].to_string());
        assert_eq!(
            row[col("request_id")],
            event["request_id"].as_str().unwrap()
        );
        assert_eq!(row[col("actor_email")], "admin@acme.test");
        assert_eq!(
            row[col("target_id")],
            event["target"]["id"].as_str().unwrap()
        );
        let changes: Value = serde_json::from_str(&row[col("changes")]).unwrap();
        assert_eq!(changes, event["changes"]);
    }
    problem(
        app.get("/api/v1/audit/export?format=xml", &admin.access_token)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
}

#[tokio::test]
async fn ctl_aud_3_retention_below_90_days_is_refused_and_changes_are_audited() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let settings: Value = app
        .get("/api/v1/tenant/settings", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(settings["audit_retention_days"], 365);
    for bad in [
        json!({"audit_retention_days": 30}),
        json!({"audit_retention_days": 89}),
        json!({"audit_retention_days": "90"}),
    ] {
        problem(
            app.patch("/api/v1/tenant/settings", &admin.access_token, bad)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let changed: Value = app
        .patch(
            "/api/v1/tenant/settings",
            &admin.access_token,
            json!({"audit_retention_days": 90}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(changed["audit_retention_days"], 90);
    let events = app.audit(&admin).await;
    let event = events
        .iter()
        .find(|e| e["action"] == "tenant.settings.update")
        .unwrap();
    assert_eq!(event["changes"]["before"]["audit_retention_days"], 365);
    assert_eq!(event["changes"]["after"]["audit_retention_days"], 90);
    let member = app.user(&admin, "m@acme.test", "member").await;
    problem(
        app.patch(
            "/api/v1/tenant/settings",
            &member.access_token,
            json!({"audit_retention_days": 400}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn ctl_aud_3_the_retention_job_purges_old_events_and_keeps_the_chain_verifiable() {
    let (app, admin) = trail().await;
    app.patch(
        "/api/v1/tenant/settings",
        &admin.access_token,
        json!({"audit_retention_days": 90}),
    )
    .await; // 14
    app.state.access_log.flush().await;
    let access_before = app
        .count("SELECT COUNT(*) FROM access_log WHERE tenant_id IS NOT NULL")
        .await;
    // Events 1-5 and the first access-log rows are 100 days old now.
    tamper(&app, &[
        "UPDATE audit_events SET occurred_at = '2000-01-01T00:00:00.000000Z' WHERE seq <= 5",
        "UPDATE access_log SET occurred_at = '2000-01-01T00:00:00.000000Z' WHERE path = '/api/v1/auth/invitations/accept'",
    ])
    .await;
    let summary = strongroom::audit::apply_retention(&app.state.store, 90)
        .await
        .unwrap();
    assert_eq!(summary.events_deleted, 5);
    assert!(summary.access_rows_deleted >= 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_events WHERE seq <= 5")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM access_log WHERE tenant_id IS NOT NULL")
            .await,
        access_before - summary.access_rows_deleted
    );
    let report = verify(&app, &admin).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["first_seq"], 6);
    assert_eq!(report["checkpoints_checked"], 1);
    let events = app.audit(&admin).await;
    let purge = events
        .iter()
        .find(|e| e["action"] == "audit.retention")
        .expect("the purge is audited");
    assert_eq!(purge["actor"]["type"], "system");
    // Nothing more to do: a second run writes nothing.
    let again = strongroom::audit::apply_retention(&app.state.store, 90)
        .await
        .unwrap();
    assert_eq!(again.events_deleted + again.access_rows_deleted, 0);
    // And the chain keeps growing from the anchor.
    app.create_order(&admin, json!({"title": "after retention"}))
        .await;
    assert_eq!(verify(&app, &admin).await["ok"], true);
}

#[tokio::test]
async fn ctl_aud_6_audit_events_reach_syslog_over_udp_and_tcp() {
    use crate::helpers::{ServerProcess, fresh_database, temp_dir};
    use std::io::Read;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for url in [
        format!("udp://{}", udp.local_addr().unwrap()),
        format!("tcp://{}", tcp.local_addr().unwrap()),
    ] {
        let dir = temp_dir("syslog");
        let db = fresh_database(&dir).await;
        let server = ServerProcess::start_with_env(
            &dir,
            &db,
            "info",
            &[("STRONGROOM_SYSLOG_URL", url.as_str())],
        )
        .await;
        crate::durability::tenant_admin_token(&server, &dir, &db).await;
        let mut received = String::new();
        if url.starts_with("udp") {
            let mut buf = [0u8; 65_536];
            while !received.contains("auth.invitation.accept") {
                let n = udp.recv(&mut buf).expect("a syslog datagram");
                received.push_str(&String::from_utf8_lossy(&buf[..n]));
                received.push('\n');
            }
        } else {
            let (mut stream, _) = tcp.accept().unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 65_536];
            while !received.contains("auth.invitation.accept") {
                let n = stream.read(&mut buf).expect("syslog frames");
                assert!(n > 0, "syslog connection closed");
                received.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        let line = received
            .split(['\n'])
            .flat_map(|l| l.split("<110>"))
            .find(|l| l.contains("auth.invitation.accept"))
            .unwrap();
        assert!(
            received.contains("<110>1 "),
            "RFC 5424 header with facility log-audit: {received}"
        );
        assert!(
            line.contains(" strongroom ") && line.contains(" audit - {"),
            "{line}"
        );
        let json = &line[line.find('{').unwrap()..];
        let event: Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(event["outcome"], "success");
        assert_eq!(event["app_version"], strongroom::VERSION);
        server.stop().await;
    }
}

#[tokio::test]
async fn ctl_aud_4_exporting_100k_events_streams_with_flat_memory() {
    use crate::helpers::{ServerProcess, fresh_database, temp_dir};
    let dir = temp_dir("export");
    let db = fresh_database(&dir).await;
    let server = ServerProcess::start(&dir, &db, "warn").await;
    let (token, _) = crate::durability::tenant_admin_token(&server, &dir, &db).await;
    // 100,000 events written straight into the table (the chain is not the point here).
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    let generate = if crate::helpers::is_postgres() {
        "INSERT INTO audit_events (id, tenant_id, seq, occurred_at, action, outcome, actor_type, actor_email, ip, user_agent, request_id, app_version, target_type, target_id, changes) \
         SELECT gen_random_uuid(), t.id, 1000 + n, '2026-01-01T00:00:00.000000Z', 'record.update', 'success', 'user', 'bulk@acme.test', '10.0.0.1', 'loader/1.0', 'req-' || n, 'v', 'record', 'rec-' || n, '{\"before\":{\"n\":1},\"after\":{\"n\":2}}' \
         FROM generate_series(1, 100000) AS n, tenants t"
    } else {
        "WITH RECURSIVE n(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM n WHERE n < 100000) \
         INSERT INTO audit_events (id, tenant_id, seq, occurred_at, action, outcome, actor_type, actor_email, ip, user_agent, request_id, app_version, target_type, target_id, changes) \
         SELECT 'bulk-' || n, t.id, 1000 + n, '2026-01-01T00:00:00.000000Z', 'record.update', 'success', 'user', 'bulk@acme.test', '10.0.0.1', 'loader/1.0', 'req-' || n, 'v', 'record', 'rec-' || n, '{\"before\":{\"n\":1},\"after\":{\"n\":2}}' \
         FROM n, tenants t"
    };
    sqlx::query(generate).execute(&mut conn).await.unwrap();
    let before = server.peak_rss_kib();
    let mut res = crate::helpers::http_client()
        .get(format!(
            "{}/api/v1/audit/export?format=jsonl",
            server.address
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (mut bytes, mut lines) = (0usize, 0usize);
    while let Some(chunk) = res.chunk().await.unwrap() {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    assert!(lines > 100_000, "{lines} lines");
    let after = server.peak_rss_kib();
    let grew_mib = (after.saturating_sub(before)) / 1024;
    eprintln!(
        "export: {lines} lines, {} MiB streamed; server peak RSS {} -> {} MiB",
        bytes / (1024 * 1024),
        before / 1024,
        after / 1024
    );
    // Buffering would hold 100k parsed events plus the 34 MiB text: well over
    // 150 MiB. Streaming costs a page of rows plus per-connection SQLite
    // caches and allocator arenas (about 17 MiB measured here).
    assert!(
        grew_mib < 32,
        "peak RSS grew by {grew_mib} MiB while exporting {} MiB",
        bytes / (1024 * 1024)
    );
    server.stop().await;
}

#[tokio::test]
async fn ctl_ops_6_the_running_version_is_in_healthz_every_audit_event_and_every_access_row() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let health: Value = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["version"], strongroom::VERSION);
    let events = app.audit(&admin).await;
    assert!(events.len() >= 3);
    assert!(
        events
            .iter()
            .all(|e| e["app_version"] == strongroom::VERSION)
    );
    let rows = app.access_log(&admin.access_token, "").await;
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["app_version"] == strongroom::VERSION));
    let mut conn = app.raw().await;
    let journal: Vec<String> = sqlx::query_scalar("SELECT DISTINCT app_version FROM journal")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(journal, [strongroom::VERSION]);
}

#[tokio::test]
async fn ctl_aud_4_the_cli_exports_a_tenants_trail_to_a_file() {
    let (app, admin) = trail().await;
    let out = app.data_dir.join("trail.csv");
    let run = || async {
        crate::helpers::cli(&app.data_dir, &app.database_url)
            .args([
                "audit", "export", "--tenant", "acme", "--format", "csv", "--out",
            ])
            .arg(&out)
            .run()
            .await
            .unwrap()
    };
    let first = run().await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let rows = crate::access_log::parse_csv(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(rows[0][0], "occurred_at");
    // 13 events, then the CLI's own audit.export event.
    assert_eq!(rows.len(), 1 + 14);
    let action = rows[0].iter().position(|c| c == "action").unwrap();
    assert_eq!(rows[14][action], "audit.export");
    let events = app.audit(&admin).await;
    let export = events
        .iter()
        .find(|e| e["action"] == "audit.export")
        .unwrap();
    assert_eq!(export["actor"]["type"], "operator");
    // An existing file is never overwritten.
    let again = run().await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("cannot create"));
}
