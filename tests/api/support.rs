//! ACC-2, AUD-5: staff reach a tenant's data only with its consent or a
//! legal order, in scope and in time, and the tenant sees every access.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// A request as a support operator sends it, under a grant when given.
async fn as_support(
    app: &TestApp,
    token: &str,
    handle: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app
        .client
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(token);
    if let Some(handle) = handle {
        req = req.header("x-support-grant", handle);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

async fn two_collections(app: &TestApp, admin: &Session) {
    app.work_orders(admin).await;
    let res = app
        .post(
            "/api/v1/collections",
            Some(&admin.access_token),
            json!({"name": "invoices", "fields": [{"name": "number", "type": "text"}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    app.create_order(admin, json!({"title": "Pump 7", "notes": "gate code 1234"}))
        .await;
    let res = app
        .post(
            "/api/v1/collections/invoices/records",
            Some(&admin.access_token),
            json!({"number": "F-1"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

async fn ask(app: &TestApp, support: &str, scope: Value, hours: i64) -> Value {
    let res = app
        .post(
            "/api/v1/ops/support-access/requests",
            Some(support),
            json!({"tenant": "acme", "scope": scope,
                   "reason": "Ticket 4711: the pump list shows nothing", "duration_hours": hours}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

async fn grants(app: &TestApp, admin: &Session) -> Vec<Value> {
    let body = app
        .get_json("/api/v1/support-access/grants", &admin.access_token)
        .await;
    body["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn ctl_acc_2_support_reaches_a_tenants_data_only_with_its_consent_and_in_scope() {
    let sink = MailSink::start().await;
    let app = spawn_app_mailing(&sink).await;
    let admin = app.admin_via(&sink, "acme").await;
    two_collections(&app, &admin).await;
    let (support, support_email) = app.operator_account("support").await;
    let records = "/api/v1/collections/work_orders/records";
    // No grant: an operator token opens nothing of the tenant's.
    for handle in [
        None,
        Some("nonsense"),
        Some(&*format!("{}:{}", admin.tenant_id, admin.user_id)),
    ] {
        let res = as_support(&app, &support, handle, Method::GET, records, None).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{handle:?}");
    }
    // Bad requests are refused and change nothing.
    let scope = json!({"collections": ["work_orders"], "access": "read_only"});
    for (body, status) in [
        (
            json!({"tenant": "acme", "scope": scope, "reason": "Ticket 1: x y z", "duration_hours": 73}),
            422,
        ),
        (
            json!({"tenant": "acme", "scope": scope, "reason": "short", "duration_hours": 2}),
            422,
        ),
        (
            json!({"tenant": "acme", "scope": {"collections": [], "access": "read_only"},
                "reason": "Ticket 1: x y z", "duration_hours": 2}),
            422,
        ),
        (
            json!({"tenant": "nosuch", "scope": scope, "reason": "Ticket 1: x y z", "duration_hours": 2}),
            404,
        ),
    ] {
        let res = app
            .post(
                "/api/v1/ops/support-access/requests",
                Some(&support),
                body.clone(),
            )
            .await;
        assert_eq!(res.status().as_u16(), status, "{body}");
    }
    let operator = app.operator("operator").await;
    let res = app
        .post(
            "/api/v1/ops/support-access/requests",
            Some(&operator),
            json!({"tenant": "acme", "scope": scope, "reason": "Ticket 1: x y z", "duration_hours": 2}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "only the support role asks"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM support_grants").await, 0);

    // The request: pending, and the tenant's admins are mailed.
    let grant = ask(&app, &support, scope.clone(), 2).await;
    assert_eq!(grant["state"], "pending");
    let handle = grant["handle"].as_str().unwrap().to_owned();
    let id = grant["id"].as_str().unwrap().to_owned();
    let mail = sink.nth_about(&admin.email, "Support asks", 1).await;
    let text = mail.text.unwrap();
    assert!(
        text.contains("Ticket 4711") && text.contains(&support_email),
        "{text}"
    );
    let pending = as_support(&app, &support, Some(&handle), Method::GET, records, None).await;
    assert_eq!(
        pending.status(),
        StatusCode::FORBIDDEN,
        "pending opens nothing"
    );

    // Approved: exactly the scope — one collection, read only, no files.
    let res = app
        .post(
            &format!("/api/v1/support-access/requests/{id}/approve"),
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let approved: Value = res.json().await.unwrap();
    assert_eq!(approved["state"], "active");
    let res = as_support(&app, &support, Some(&handle), Method::GET, records, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let list: Value = res.json().await.unwrap();
    let order_id = list["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list["items"][0]["title"], "Pump 7");
    for (method, path, body) in [
        (
            Method::GET,
            "/api/v1/collections/invoices/records".to_owned(),
            None,
        ),
        (
            Method::POST,
            records.to_owned(),
            Some(json!({"title": "x"})),
        ),
        (Method::GET, "/api/v1/users".to_owned(), None),
        (Method::GET, "/api/v1/audit".to_owned(), None),
        (
            Method::GET,
            format!("{records}/{order_id}/files/00000000-0000-7000-8000-000000000000"),
            None,
        ),
        (Method::GET, "/api/v1/me".to_owned(), None),
    ] {
        let res = as_support(&app, &support, Some(&handle), method.clone(), &path, body).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM records").await, 2);
    // Another operator's token does not use this grant.
    let (other, _) = app.operator_account("support").await;
    let res = as_support(&app, &other, Some(&handle), Method::GET, records, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Every access is in the tenant's trail with the grant and its reason.
    let events = app.audit(&admin).await;
    let accesses: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "support.access")
        .collect();
    assert_eq!(accesses.len(), 1, "{accesses:?}");
    let access = accesses[0];
    assert_eq!(access["target"], json!({"type": "support_grant", "id": id}));
    assert_eq!(access["actor"]["type"], "operator");
    assert_eq!(access["actor"]["email"], support_email.as_str());
    assert_eq!(access["changes"]["grant"], id.as_str());
    assert_eq!(
        access["changes"]["reason"],
        "Ticket 4711: the pump list shows nothing"
    );
    assert_eq!(access["changes"]["operation"], "record.list");
    assert_eq!(access["changes"]["path"], records);
    for action in ["support.request", "support.approve"] {
        assert!(events.iter().any(|e| e["action"] == action), "no {action}");
    }
    // And in its access log, as actor type support with the grant's id.
    let logged = app
        .access_log(
            &admin.access_token,
            "&path_prefix=/api/v1/collections/work_orders",
        )
        .await;
    assert!(
        logged
            .iter()
            .any(|r| r["actor_type"] == "support" && r["actor_id"] == id.as_str()),
        "{logged:?}"
    );
    // The tenant lists the grant with what was accessed under it.
    let listed = grants(&app, &admin).await;
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["accesses_count"], 1);
    assert_eq!(listed[0]["accesses"][0]["operation"], "record.list");
    // The operator sees the grant's state.
    let seen: Value = app
        .get(
            &format!("/api/v1/ops/support-access/grants/{handle}"),
            &support,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["state"], "active");

    // Revoked: the next request is refused at once.
    let res = app
        .post(
            &format!("/api/v1/support-access/grants/{id}/revoke"),
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = as_support(&app, &support, Some(&handle), Method::GET, records, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let again = app
        .post(
            &format!("/api/v1/support-access/grants/{id}/revoke"),
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    problem(again, StatusCode::CONFLICT).await;

    // A denied request never opens; approving it afterwards is refused.
    let denied = ask(&app, &support, scope.clone(), 2).await;
    let denied_id = denied["id"].as_str().unwrap();
    let res = app
        .post(
            &format!("/api/v1/support-access/requests/{denied_id}/deny"),
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post(
            &format!("/api/v1/support-access/requests/{denied_id}/approve"),
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    problem(res, StatusCode::CONFLICT).await;
    let res = as_support(
        &app,
        &support,
        denied["handle"].as_str(),
        Method::GET,
        records,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Read-write with files: writes work and are the operator's in the trail.
    let rw = ask(
        &app,
        &support,
        json!({"collections": ["work_orders"], "access": "read_write", "files": true}),
        1,
    )
    .await;
    let rw_id = rw["id"].as_str().unwrap().to_owned();
    let rw_handle = rw["handle"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/support-access/requests/{rw_id}/approve"),
        Some(&admin.access_token),
        json!({}),
    )
    .await;
    let res = as_support(
        &app,
        &support,
        Some(&rw_handle),
        Method::POST,
        records,
        Some(json!({"title": "fixed by support"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let events = app.audit(&admin).await;
    let created = events
        .iter()
        .find(|e| e["action"] == "record.create" && e["actor"]["type"] == "operator")
        .expect("the support write is in the trail");
    assert_eq!(created["actor"]["email"], support_email.as_str());
    // Expiry ends it by itself: the grant's end has come (moved back here,
    // as an hour passing would).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut raw = app.raw().await;
    sqlx::query(&format!(
        "UPDATE support_grants SET expires_at = '{}' WHERE id = '{rw_id}'",
        strongroom::clock::now()
    ))
    .execute(&mut raw)
    .await
    .unwrap();
    let res = as_support(&app, &support, Some(&rw_handle), Method::GET, records, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let listed = grants(&app, &admin).await;
    let states: Vec<&str> = listed
        .iter()
        .map(|g| g["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["expired", "denied", "revoked"]);
    // The live checks: no access after a grant ended.
    for control in ["ACC-2", "AUD-5"] {
        let out = app
            .cli()
            .await
            .args(["verify", "--json"])
            .run()
            .await
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let found = report
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == control)
            .unwrap()
            .clone();
        assert_eq!(found["verdict"], "pass", "{found}");
    }
}

#[tokio::test]
async fn ctl_acc_2_a_legal_order_that_may_not_be_told_stays_hidden_from_the_tenant_until_released()
{
    let sink = MailSink::start().await;
    let app = spawn_app_mailing(&sink).await;
    let admin = app.admin_via(&sink, "acme").await;
    two_collections(&app, &admin).await;
    let (support, support_email) = app.operator_account("support").await;
    let officer = app.operator("security_officer").await;
    let order = json!({"tenant": "acme", "grantee": support_email,
                       "scope": {"collections": ["invoices"], "access": "read_only"},
                       "reason": "Order of the court: invoices of 2026", "duration_hours": 24,
                       "reference": "2 T 17/2026", "authority": "District court of Brno",
                       "notify": false});
    // Only a security officer records one.
    let res = app
        .post("/api/v1/ops/legal-orders", Some(&support), order.clone())
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let mut wrong = order.clone();
    wrong["grantee"] = json!("nobody@ops.test");
    let res = app
        .post("/api/v1/ops/legal-orders", Some(&officer), wrong)
        .await;
    problem(res, StatusCode::NOT_FOUND).await;
    let res = app
        .post("/api/v1/ops/legal-orders", Some(&officer), order)
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let granted: Value = res.json().await.unwrap();
    assert_eq!(granted["state"], "active");
    assert_eq!(granted["kind"], "legal_order");
    let (id, handle) = (
        granted["id"].as_str().unwrap().to_owned(),
        granted["handle"].as_str().unwrap().to_owned(),
    );
    // It works at once, for its scope.
    let invoices = "/api/v1/collections/invoices/records";
    let res = as_support(&app, &support, Some(&handle), Method::GET, invoices, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let write = json!({"number": "F-2"});
    let res = as_support(
        &app,
        &support,
        Some(&handle),
        Method::POST,
        invoices,
        Some(write),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "read only");
    // The tenant sees nothing of it: no grant, no event, no log row, no mail.
    assert!(grants(&app, &admin).await.is_empty());
    let trail = serde_json::to_string(&app.audit(&admin).await).unwrap();
    assert!(
        !trail.contains(&id) && !trail.contains("support."),
        "{trail}"
    );
    let export = app
        .get("/api/v1/audit/export?format=jsonl", &admin.access_token)
        .await
        .text()
        .await
        .unwrap();
    assert!(!export.contains(&id));
    let logged = app.access_log(&admin.access_token, "").await;
    assert!(
        logged.iter().all(|r| r["actor_type"] != "support"),
        "{logged:?}"
    );
    for path in [
        format!("/api/v1/support-access/grants/{id}/revoke"),
        format!("/api/v1/support-access/requests/{id}/approve"),
    ] {
        let res = app.post(&path, Some(&admin.access_token), json!({})).await;
        problem(res, StatusCode::NOT_FOUND).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        sink.to(&admin.email)
            .iter()
            .all(|m| !m.subject.contains("legal order")),
        "the tenant was mailed"
    );
    // Released: the tenant sees the grant, every access under it, a mail.
    let res = app
        .post(
            &format!("/api/v1/ops/legal-orders/{handle}/release"),
            Some(&officer),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let listed = grants(&app, &admin).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["legal_reference"], "2 T 17/2026");
    assert_eq!(listed[0]["accesses_count"], 1);
    let trail = app.audit(&admin).await;
    assert!(
        trail
            .iter()
            .any(|e| e["action"] == "support.access" && e["target"]["id"] == id.as_str())
    );
    assert!(trail.iter().any(|e| e["action"] == "support.legal_order"));
    let mail = sink.nth_about(&admin.email, "A legal order", 1).await;
    assert!(mail.text.unwrap().contains("District court of Brno"));
    let again = app
        .post(
            &format!("/api/v1/ops/legal-orders/{handle}/release"),
            Some(&officer),
            json!({}),
        )
        .await;
    problem(again, StatusCode::CONFLICT).await;
    // The chain still verifies: hiding was a read filter, never an edit.
    let verified = app
        .get_json("/api/v1/audit/verify", &admin.access_token)
        .await;
    assert_eq!(verified["ok"], true, "{verified}");
}

#[tokio::test]
async fn ctl_aud_5_every_request_under_a_grant_is_in_the_tenants_trail_and_access_log() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    two_collections(&app, &admin).await;
    let support = app.operator("support").await;
    let grant = ask(
        &app,
        &support,
        json!({"collections": ["work_orders"], "access": "read_only"}),
        1,
    )
    .await;
    let (id, handle) = (
        grant["id"].as_str().unwrap().to_owned(),
        grant["handle"].as_str().unwrap().to_owned(),
    );
    let res = app
        .post(
            &format!("/api/v1/support-access/requests/{id}/approve"),
            Some(&admin.access_token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let records = "/api/v1/collections/work_orders/records";
    let list = as_support(&app, &support, Some(&handle), Method::GET, records, None).await;
    let list: Value = list.json().await.unwrap();
    let one = format!("{records}/{}", list["items"][0]["id"].as_str().unwrap());
    let read = as_support(&app, &support, Some(&handle), Method::GET, &one, None).await;
    assert_eq!(read.status(), StatusCode::OK);
    let write = as_support(
        &app,
        &support,
        Some(&handle),
        Method::PATCH,
        &one,
        Some(json!({"title": "x"})),
    )
    .await;
    assert_eq!(write.status(), StatusCode::FORBIDDEN);
    // Three requests, three events about the grant: two reads, one denial.
    let events = app.audit(&admin).await;
    let about: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"]["type"] == "support_grant" && e["target"]["id"] == id.as_str())
        .filter(|e| e["action"] != "support.request" && e["action"] != "support.approve")
        .collect();
    let actions: Vec<(&str, &str)> = about
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("record.update", "denied"),
            ("support.access", "success"),
            ("support.access", "success")
        ]
    );
    let operations: Vec<&str> = about[1..]
        .iter()
        .map(|e| e["changes"]["operation"].as_str().unwrap())
        .collect();
    assert_eq!(operations, ["record.read", "record.list"]);
    assert!(
        about[1..]
            .iter()
            .all(|e| e["changes"]["reason"] == "Ticket 4711: the pump list shows nothing")
    );
    // The access log has each request, as the grant's.
    let logged = app.access_log(&admin.access_token, "").await;
    let under: Vec<&Value> = logged
        .iter()
        .filter(|r| r["actor_type"] == "support" && r["actor_id"] == id.as_str())
        .collect();
    assert_eq!(under.len(), 3, "{logged:?}");
    // And the tenant's grant list counts what was accessed.
    let listed = grants(&app, &admin).await;
    assert_eq!(listed[0]["accesses_count"], 2);
}
