use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app};

const ORDERS: &str = "/api/v1/collections/work_orders/records";

#[tokio::test]
async fn records_round_trip_create_read_update_delete_with_etags() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let res = app
        .post(
            ORDERS,
            Some(&admin.access_token),
            json!({"title": "Fix pump", "status": "open", "priority": 2}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["etag"], "\"1\"");
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(created["version"], 1);
    assert_eq!(created["title"], "Fix pump");
    assert!(created["created_at"].is_string() && created["updated_at"].is_string());

    let path = format!("{ORDERS}/{id}");
    let res = app.get(&path, &admin.access_token).await;
    assert_eq!(res.headers()["etag"], "\"1\"");
    assert_eq!(res.json::<Value>().await.unwrap(), created);

    let res = app
        .client
        .patch(format!("{}{path}", app.address))
        .bearer_auth(&admin.access_token)
        .header("if-match", "\"1\"")
        .json(&json!({"status": "done", "priority": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "\"2\"");
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["status"], "done");
    assert!(updated.get("priority").is_none(), "null removes a field");
    assert_eq!(updated["version"], 2);

    // A writer holding the old ETag loses cleanly.
    let stale = app
        .client
        .patch(format!("{}{path}", app.address))
        .bearer_auth(&admin.access_token)
        .header("if-match", "\"1\"")
        .json(&json!({"title": "lost update"}))
        .send()
        .await
        .unwrap();
    problem(stale, StatusCode::PRECONDITION_FAILED).await;
    let stale_delete = app
        .client
        .delete(format!("{}{path}", app.address))
        .bearer_auth(&admin.access_token)
        .header("if-match", "\"1\"")
        .send()
        .await
        .unwrap();
    problem(stale_delete, StatusCode::PRECONDITION_FAILED).await;
    let current: Value = app
        .get(&path, &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["title"], "Fix pump");

    assert_eq!(
        app.delete(&path, &admin.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    problem(
        app.get(&path, &admin.access_token).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get(&format!("{ORDERS}/not-an-id"), &admin.access_token)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get("/api/v1/collections/nothing/records", &admin.access_token)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn invalid_records_are_422_naming_the_field_and_store_nothing() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let cases = [
        (json!({"status": "open"}), "title"),
        (json!({"title": 5}), "title"),
        (json!({"title": "x", "priority": "high"}), "priority"),
        (json!({"title": "x", "priority": 1.5}), "priority"),
        (json!({"title": "x", "status": "lost"}), "status"),
        (json!({"title": "x", "colour": "red"}), "colour"),
    ];
    for (body, field) in cases {
        let res = app
            .post(ORDERS, Some(&admin.access_token), body.clone())
            .await;
        let problem = problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["field"], field, "{body}");
    }
    let res = app
        .post(
            ORDERS,
            Some(&admin.access_token),
            json!(["not", "an", "object"]),
        )
        .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(app.count("SELECT COUNT(*) FROM records").await, 0);
}

#[tokio::test]
async fn invalid_collection_definitions_are_422() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let bad = [
        json!({"name": "Work Orders", "fields": []}),
        json!({"name": "ok", "fields": [{"name": "a", "type": "blob"}]}),
        json!({"name": "ok", "fields": [{"name": "s", "type": "select"}]}),
        json!({"name": "ok", "fields": [{"name": "id", "type": "text"}]}),
        json!({"name": "ok", "fields": [{"name": "a", "type": "text"}, {"name": "a", "type": "text"}]}),
        json!({"name": "ok", "fields": [{"name": "a", "type": "text", "colour": true}]}),
    ];
    for body in bad {
        let res = app
            .post(
                "/api/v1/collections",
                Some(&admin.access_token),
                body.clone(),
            )
            .await;
        problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM collections").await, 0);
    app.work_orders(&admin).await;
    let dup = app
        .post(
            "/api/v1/collections",
            Some(&admin.access_token),
            json!({"name": "work_orders", "fields": []}),
        )
        .await;
    problem(dup, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn a_refused_write_leaves_no_row_no_journal_entry_and_no_audit_event() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    app.create_order(&admin, json!({"title": "first", "code": "C-1"}))
        .await;
    let before = counts(&app).await;
    let res = app
        .post(
            ORDERS,
            Some(&admin.access_token),
            json!({"title": "second", "code": "C-1"}),
        )
        .await;
    let body = problem(res, StatusCode::CONFLICT).await;
    assert_eq!(body["field"], "code");
    assert_eq!(counts(&app).await, before);
    // A unique value is freed when its record goes away.
    let list: Value = app
        .get(ORDERS, &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    let id = list["items"][0]["id"].as_str().unwrap();
    app.delete(&format!("{ORDERS}/{id}"), &admin.access_token)
        .await;
    app.create_order(&admin, json!({"title": "second", "code": "C-1"}))
        .await;
}

#[tokio::test]
async fn filters_sorting_and_cursor_pages_are_stable_while_records_are_added() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    for i in 0..7 {
        let status = if i % 2 == 0 { "open" } else { "done" };
        app.create_order(
            &admin,
            json!({"title": format!("t{i}"), "status": status, "priority": i}),
        )
        .await;
    }
    let titles = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let open: Value = app
        .get(
            &format!("{ORDERS}?filter%5Bstatus%5D=open&sort=created_at"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&open), ["t0", "t2", "t4", "t6"]);
    let by_priority: Value = app
        .get(
            &format!("{ORDERS}?filter%5Bpriority%5D=3"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&by_priority), ["t3"]);

    let page1: Value = app
        .get(
            &format!("{ORDERS}?sort=created_at&limit=3"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&page1), ["t0", "t1", "t2"]);
    // New records arrive between pages.
    app.create_order(&admin, json!({"title": "late"})).await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2: Value = app
        .get(
            &format!("{ORDERS}?sort=created_at&limit=3&cursor={cursor}"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&page2), ["t3", "t4", "t5"]);
    let cursor = page2["next_cursor"].as_str().unwrap();
    let page3: Value = app
        .get(
            &format!("{ORDERS}?sort=created_at&limit=3&cursor={cursor}"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&page3), ["t6", "late"]);
    assert!(page3["next_cursor"].is_null());
    // Newest first is the default.
    let newest: Value = app
        .get(&format!("{ORDERS}?limit=2"), &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&newest), ["late", "t6"]);

    for bad in [
        "sort=title",
        "limit=0",
        "limit=201",
        "cursor=%%%",
        "filter%5Bnope%5D=1",
        "filter%5Bpriority%5D=abc",
        "filter%5Bnotes%5D=x",
        "colour=red",
    ] {
        let res = app
            .get(&format!("{ORDERS}?{bad}"), &admin.access_token)
            .await;
        problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
}

#[tokio::test]
async fn collections_can_be_read_changed_and_deleted_with_their_records() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    app.create_order(&admin, json!({"title": "a", "code": "K"}))
        .await;
    let path = "/api/v1/collections/work_orders";
    let mut fields = fields_of(&app, &admin).await;
    fields.retain(|f| f["name"] != "code");
    fields.push(json!({"name": "asset", "type": "text"}));
    let res = app
        .patch(path, &admin.access_token, json!({"fields": fields}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let record: Value = app
        .get(ORDERS, &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        record["items"][0].get("code").is_none(),
        "a removed field is no longer returned"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM record_keys").await, 0);
    let mut retyped = fields.clone();
    retyped[0]["type"] = json!("integer");
    problem(
        app.patch(path, &admin.access_token, json!({"fields": retyped}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    assert_eq!(
        app.delete(path, &admin.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    problem(
        app.get(path, &admin.access_token).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(app.count("SELECT COUNT(*) FROM records").await, 0);
}

#[tokio::test]
async fn ctl_bak_1_every_change_is_journaled_with_its_after_image_in_a_gap_free_sequence() {
    let app = spawn_app().await;
    let a = app.admin("acme").await;
    let b = app.admin("globex").await;
    app.work_orders(&a).await;
    app.work_orders(&b).await;
    let record = app
        .create_order(&a, json!({"title": "journaled", "priority": 1}))
        .await;
    let id = record["id"].as_str().unwrap();
    app.patch(
        &format!("{ORDERS}/{id}"),
        &a.access_token,
        json!({"priority": 2}),
    )
    .await;
    app.create_order(&b, json!({"title": "other tenant"})).await;
    app.delete(&format!("{ORDERS}/{id}"), &a.access_token).await;

    let mut conn = app.raw().await;
    for tenant in [&a.tenant_id, &b.tenant_id] {
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM journal WHERE CAST(tenant_id AS TEXT) = $1 ORDER BY seq",
        )
        .bind(tenant)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "gap in tenant {tenant}'s journal"
        );
        let audit: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM audit_events WHERE CAST(tenant_id AS TEXT) = $1 ORDER BY seq",
        )
        .bind(tenant)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(audit, (1..=audit.len() as i64).collect::<Vec<_>>());
    }
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT op, after FROM journal WHERE CAST(tenant_id AS TEXT) = $1 AND entity = 'record' AND entity_id = $2 ORDER BY seq",
    )
    .bind(&a.tenant_id)
    .bind(id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let ops: Vec<&str> = rows.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(ops, ["insert", "update", "delete"]);
    let after_update: Value = serde_json::from_str(rows[1].1.as_deref().unwrap()).unwrap();
    assert_eq!(after_update["data"]["priority"], 2);
    assert_eq!(after_update["version"], 2);
    assert!(rows[2].1.is_none());
}

/// The work_orders collection's field definitions, as the API gives them.
async fn fields_of(app: &crate::helpers::TestApp, admin: &crate::helpers::Session) -> Vec<Value> {
    let got: Value = app
        .get("/api/v1/collections/work_orders", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    got["fields"].as_array().unwrap().clone()
}

async fn counts(app: &crate::helpers::TestApp) -> (i64, i64, i64, i64) {
    (
        app.count("SELECT COUNT(*) FROM records").await,
        app.count("SELECT COUNT(*) FROM journal").await,
        app.count("SELECT COUNT(*) FROM audit_events").await,
        app.count("SELECT COUNT(*) FROM record_keys").await,
    )
}

/// The writer remembers collections between writes; a change to one must
/// apply to the very next write, and a failed write must not leave behind
/// what it looked up.
#[tokio::test]
async fn a_collection_change_applies_to_the_next_write_at_once() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    app.create_order(&admin, json!({"title": "before"})).await;
    let path = "/api/v1/collections/work_orders";
    let mut fields = fields_of(&app, &admin).await;
    fields.push(json!({"name": "asset", "type": "text", "required": true}));
    let res = app
        .patch(path, &admin.access_token, json!({"fields": fields}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let refused = problem(
        app.post(
            ORDERS,
            Some(&admin.access_token),
            json!({"title": "no asset"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(refused.to_string().contains("asset"), "{refused}");
    app.create_order(&admin, json!({"title": "after", "asset": "A-1"}))
        .await;

    // Deleted and created again under the same name: the new one counts.
    assert_eq!(
        app.delete(path, &admin.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    problem(
        app.post(ORDERS, Some(&admin.access_token), json!({"title": "gone"}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    app.work_orders(&admin).await;
    let record = app.create_order(&admin, json!({"title": "again"})).await;
    let collection_id: String = sqlx::query_scalar(
        "SELECT c.name FROM records r JOIN collections c ON c.id = r.collection_id WHERE CAST(r.id AS TEXT) = $1",
    )
    .bind(record["id"].as_str().unwrap())
    .fetch_one(&mut app.raw().await)
    .await
    .unwrap();
    assert_eq!(collection_id, "work_orders");
    assert_eq!(app.count("SELECT COUNT(*) FROM records").await, 1);
}

/// Another process writing to the same database (the CLI beside a running
/// server) moves a tenant's sequences and chain head; the server's next
/// writes must carry on from there, gap-free, with an intact chain.
#[tokio::test]
async fn writes_from_another_process_beside_the_server_keep_sequences_and_chain_whole() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    for i in 0..3 {
        app.create_order(&admin, json!({"title": format!("before {i}")}))
            .await;
    }
    app.cli_ok(&["keys", "rotate", "--tenant", "acme"]).await;
    for i in 0..3 {
        app.create_order(&admin, json!({"title": format!("after {i}")}))
            .await;
    }
    let mut conn = app.raw().await;
    for table in ["journal", "audit_events"] {
        let seqs: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT seq FROM {table} WHERE CAST(tenant_id AS TEXT) = $1 ORDER BY seq"
        ))
        .bind(&admin.tenant_id)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "{table}");
    }
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_events WHERE CAST(tenant_id AS TEXT) = $1 ORDER BY seq DESC LIMIT 4",
    )
    .bind(&admin.tenant_id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(actions[3].starts_with("keys."), "{actions:?}");
    let verified = app.cli_ok(&["audit", "verify", "--tenant", "acme"]).await;
    assert!(verified.contains("ok"), "{verified}");
}

/// On PostgreSQL the writer sends a job's statements with their values as
/// literals, in one round trip: text that looks like SQL, quotes,
/// backslashes, placeholders and non-ASCII must come back exactly as sent,
/// and change nothing else.
#[tokio::test]
async fn hostile_text_is_stored_and_read_back_exactly() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let hostile = [
        "it's",
        "''",
        "\\' OR 1=1 --",
        "'); DROP TABLE records; --",
        "$1 $2 $$ $tag$ E'\\x41'",
        "back\\slash \\\\ end\\",
        "/* not a comment */ -- nor this",
        "\"quoted\" ident",
        "Żółć — 東京 🚰",
        "line\nbreak\ttab\r",
    ];
    let mut ids = Vec::new();
    for text in hostile {
        let res = app
            .post(
                ORDERS,
                Some(&admin.access_token),
                json!({"title": text, "code": format!("{text}'"), "notes": text, "priority": -3}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{text:?}");
        let created: Value = res.json().await.unwrap();
        ids.push((text, created["id"].as_str().unwrap().to_owned()));
    }
    for (text, id) in &ids {
        let got: Value = app
            .get(&format!("{ORDERS}/{id}"), &admin.access_token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(got["title"], *text);
        assert_eq!(got["code"], format!("{text}'"));
        assert_eq!(got["notes"], *text);
        assert_eq!(got["priority"], -3);
    }
    // A NUL is refused cleanly, and nothing of it is stored.
    let res = app
        .post(
            ORDERS,
            Some(&admin.access_token),
            json!({"title": "nul\u{0}inside"}),
        )
        .await;
    assert!(res.status().is_client_error(), "{}", res.status());
    let listed: Value = app
        .get(&format!("{ORDERS}?limit=100"), &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), hostile.len());
}
