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
        json!({"before": null, "after": {"title": "Pump", "priority": 1}})
    );
    // An update's diff holds only what changed.
    let update = events
        .iter()
        .find(|e| e["action"] == "record.update")
        .unwrap();
    assert_eq!(
        update["changes"],
        json!({"before": {"priority": 1}, "after": {"priority": 5}})
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
async fn sensitive_values_never_reach_the_audit_trail_in_clear() {
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
    assert_eq!(report["checkpoints_checked"], 1);
    // The CLI agrees and exits zero.
    let out = crate::helpers::cli(&app.data_dir, &app.database_url)
        .args(["audit", "verify", "--tenant", "acme"])
        .output()
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
                 SELECT 'forged', tenant_id, 14, occurred_at, 'record.delete', outcome, actor_type, request_id, app_version, hash, hash FROM audit_events WHERE seq = 13",
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
        let out = crate::helpers::cli(&app.data_dir, &app.database_url)
            .args(["audit", "verify"])
            .output()
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
    let rows = sqlx::query(
        "SELECT id, tenant_id, seq, occurred_at, action, outcome, actor_type, actor_id, actor_email, ip, user_agent, \
         request_id, app_version, target_type, target_id, changes, prev_hash FROM audit_events WHERE seq >= 5 ORDER BY seq",
    )
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
