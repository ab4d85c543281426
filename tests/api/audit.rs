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
