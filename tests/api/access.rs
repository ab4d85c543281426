//! ACC-1: custom roles, per-collection permissions, redaction by role,
//! audit values by permission, API keys, and the route registry's
//! declared permissions as the check.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// A second collection beside `work_orders`, with a personal field.
async fn invoices(app: &TestApp, admin: &Session) {
    let res = app
        .post(
            "/api/v1/collections",
            Some(&admin.access_token),
            json!({"name": "invoices", "fields": [
                {"name": "number", "type": "text", "required": true},
                {"name": "customer_email", "type": "email", "personal": true}
            ]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

async fn create_role(app: &TestApp, admin: &Session, name: &str, permissions: Value) -> Value {
    let res = app
        .post(
            "/api/v1/roles",
            Some(&admin.access_token),
            json!({"name": name, "description": format!("{name} for tests"),
                   "permissions": permissions}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED, "creating role {name}");
    res.json().await.unwrap()
}

async fn status_of(app: &TestApp, method: Method, path: &str, token: &str) -> StatusCode {
    let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
    app.request(method, path, Some(token), body).await.status()
}

#[tokio::test]
async fn ctl_acc_1_a_custom_role_reads_its_collection_only_and_sees_redactions_without_read_personal()
 {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    invoices(&app, &admin).await;
    let order = app
        .create_order(&admin, json!({"title": "Pump", "notes": "door code 4711"}))
        .await;
    let invoice = app
        .post(
            "/api/v1/collections/invoices/records",
            Some(&admin.access_token),
            json!({"number": "F-1", "customer_email": "anna@example.test"}),
        )
        .await;
    assert_eq!(invoice.status(), StatusCode::CREATED);
    let role = create_role(
        &app,
        &admin,
        "wo_reader",
        json!(["collections.read", "records.read:work_orders"]),
    )
    .await;
    assert_eq!(role["built_in"], false);
    assert_eq!(
        role["permissions"],
        json!(["collections.read", "records.read:work_orders"])
    );
    let reader = app.user(&admin, "reader@acme.test", "wo_reader").await;
    let token = reader.access_token.as_str();

    // Its collection only: reads yes, writes and the other collection no.
    let list = app
        .get("/api/v1/collections/work_orders/records", token)
        .await;
    assert_eq!(list.status(), StatusCode::OK);
    let items: Value = list.json().await.unwrap();
    assert_eq!(items["items"][0]["title"], "Pump");
    // No records.read_personal: the sensitive value is redacted.
    assert_eq!(items["items"][0]["notes"], "[redacted]");
    let one: Value = app
        .get(
            &format!(
                "/api/v1/collections/work_orders/records/{}",
                order["id"].as_str().unwrap()
            ),
            token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["notes"], "[redacted]");
    for (method, path) in [
        (Method::GET, "/api/v1/collections/invoices/records"),
        (Method::POST, "/api/v1/collections/work_orders/records"),
        (Method::GET, "/api/v1/users"),
        (Method::GET, "/api/v1/audit"),
    ] {
        assert_eq!(
            status_of(&app, method.clone(), path, token).await,
            StatusCode::FORBIDDEN,
            "{method} {path}"
        );
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM records").await, 2);
    let me: Value = app.get("/api/v1/me", token).await.json().await.unwrap();
    assert_eq!(me["roles"], json!(["wo_reader"]));
    assert_eq!(me["user"]["roles"], json!(["wo_reader"]));

    // A change of the role applies from the next request on.
    let res = app
        .patch(
            &format!("/api/v1/roles/{}", role["id"].as_str().unwrap()),
            &admin.access_token,
            json!({"permissions": ["collections.read", "records.read:work_orders",
                                   "records.read:invoices", "records.read_personal"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let items = app
        .get_json("/api/v1/collections/work_orders/records", token)
        .await;
    assert_eq!(items["items"][0]["notes"], "door code 4711");
    let invoices = app
        .get_json("/api/v1/collections/invoices/records", token)
        .await;
    assert_eq!(invoices["items"][0]["customer_email"], "anna@example.test");

    // Built-in roles stay as they are.
    for (method, body) in [
        (Method::PATCH, Some(json!({"permissions": ["audit.read"]}))),
        (Method::DELETE, None),
    ] {
        let res = app
            .request(
                method,
                "/api/v1/roles/viewer",
                Some(&admin.access_token),
                body,
            )
            .await;
        assert_eq!(
            problem(res, StatusCode::CONFLICT).await["type"],
            "urn:strongroom:problem:built-in-role"
        );
    }
    let listed = app.get_json("/api/v1/roles", &admin.access_token).await;
    let names = strings(&listed["items"], "name");
    assert_eq!(names, ["admin", "member", "viewer", "auditor", "wo_reader"]);

    // Bad input is refused and changes nothing.
    for body in [
        json!({"name": "x", "permissions": ["records.read:Bad Name"]}),
        json!({"name": "x", "permissions": ["root"]}),
        json!({"name": "admin", "permissions": []}),
        json!({"name": "Not A Name", "permissions": []}),
    ] {
        let res = app
            .post("/api/v1/roles", Some(&admin.access_token), body.clone())
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let dup = app
        .post(
            "/api/v1/roles",
            Some(&admin.access_token),
            json!({"name": "wo_reader", "permissions": []}),
        )
        .await;
    problem(dup, StatusCode::CONFLICT).await;
    assert_eq!(app.count("SELECT COUNT(*) FROM roles").await, 1);

    // A role in use is deleted only with a role its holders move to.
    let path = format!("/api/v1/roles/{}", role["id"].as_str().unwrap());
    let in_use = app.delete(&path, &admin.access_token).await;
    assert!(
        problem(in_use, StatusCode::CONFLICT).await["detail"]
            .as_str()
            .unwrap()
            .contains("held by 1 users")
    );
    let unknown = app
        .delete(&format!("{path}?reassign_to=nosuch"), &admin.access_token)
        .await;
    problem(unknown, StatusCode::UNPROCESSABLE_ENTITY).await;
    let moved = app
        .delete(&format!("{path}?reassign_to=auditor"), &admin.access_token)
        .await;
    assert_eq!(moved.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.count("SELECT COUNT(*) FROM roles").await, 0);
    // The holder is an auditor now, from their next request on.
    assert_eq!(
        status_of(
            &app,
            Method::GET,
            "/api/v1/collections/work_orders/records",
            token
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_of(&app, Method::GET, "/api/v1/audit", token).await,
        StatusCode::OK
    );
    let users = app.get_json("/api/v1/users", &admin.access_token).await;
    let reader_now = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "reader@acme.test")
        .unwrap();
    assert_eq!(reader_now["roles"], json!(["auditor"]));
    let events = app.audit(&admin).await;
    for action in [
        "role.create",
        "role.update",
        "role.delete",
        "role.reassigned",
    ] {
        assert!(
            events.iter().any(|e| e["action"] == action),
            "no {action} event"
        );
    }
}

#[tokio::test]
async fn ctl_acc_1_nobody_gives_a_role_more_than_they_may_do_themselves() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    // A role manager who may not manage users or keys.
    create_role(
        &app,
        &admin,
        "role_manager",
        json!(["roles.manage", "users.read"]),
    )
    .await;
    create_role(
        &app,
        &admin,
        "people",
        json!(["users.manage", "users.read"]),
    )
    .await;
    let manager = app.user(&admin, "roles@acme.test", "role_manager").await;
    let res = app
        .post(
            "/api/v1/roles",
            Some(&manager.access_token),
            json!({"name": "sneaky", "permissions": ["users.manage"]}),
        )
        .await;
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert!(body["detail"].as_str().unwrap().contains("users.manage"));
    // Within their own permissions they may.
    let res = app
        .post(
            "/api/v1/roles",
            Some(&manager.access_token),
            json!({"name": "reader_of_users", "permissions": ["users.read"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // A user manager cannot hand out admin.
    let people = app.user(&admin, "people@acme.test", "people").await;
    let res = app
        .post(
            "/api/v1/users",
            Some(&people.access_token),
            json!({"email": "boss@acme.test", "roles": ["admin"]}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN).await;
    let res = app
        .patch(
            &format!("/api/v1/users/{}", people.user_id),
            &people.access_token,
            json!({"roles": ["people", "admin"]}),
        )
        .await;
    problem(res, StatusCode::FORBIDDEN).await;
    let users = app.count("SELECT COUNT(*) FROM users").await;
    assert_eq!(users, 3, "nothing was written");
    // Several roles at once; /me shows their union.
    let both = app
        .post(
            "/api/v1/users",
            Some(&admin.access_token),
            json!({"email": "both@acme.test", "roles": ["viewer", "reader_of_users"]}),
        )
        .await;
    assert_eq!(both.status(), StatusCode::CREATED);
    let body: Value = both.json().await.unwrap();
    assert_eq!(body["roles"], json!(["viewer", "reader_of_users"]));
    assert_eq!(body["role"], "viewer");
}

#[tokio::test]
async fn ctl_acc_1_an_auditor_sees_which_fields_changed_but_not_record_values() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    invoices(&app, &admin).await;
    let order = app
        .create_order(&admin, json!({"title": "Pump 7", "priority": 1}))
        .await;
    let res = app
        .patch(
            &format!(
                "/api/v1/collections/work_orders/records/{}",
                order["id"].as_str().unwrap()
            ),
            &admin.access_token,
            json!({"priority": 5}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post(
            "/api/v1/collections/invoices/records",
            Some(&admin.access_token),
            json!({"number": "F-77"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let auditor = app.user(&admin, "audit@acme.test", "auditor").await;
    create_role(
        &app,
        &admin,
        "wo_auditor",
        json!(["audit.read", "records.read:work_orders"]),
    )
    .await;
    let wo_auditor = app.user(&admin, "wo-audit@acme.test", "wo_auditor").await;
    let update_of = |events: &[Value]| {
        events
            .iter()
            .find(|e| e["action"] == "record.update")
            .unwrap()["changes"]
            .clone()
    };
    let invoice_of = |events: &[Value]| {
        events
            .iter()
            .find(|e| e["action"] == "record.create" && e["changes"]["collection"] == "invoices")
            .unwrap()["changes"]
            .clone()
    };
    // The admin reads every collection: values shown.
    let all = app.audit(&admin).await;
    assert_eq!(update_of(&all)["after"], json!({"priority": 5}));
    // The auditor reads none: which fields changed, not how.
    let seen = app.audit(&auditor).await;
    assert_eq!(
        update_of(&seen)["before"],
        json!({"priority": "[redacted]"})
    );
    assert_eq!(update_of(&seen)["after"], json!({"priority": "[redacted]"}));
    assert_eq!(update_of(&seen)["values_hidden"], true);
    let text = serde_json::to_string(&seen).unwrap();
    assert!(!text.contains("Pump 7") && !text.contains("F-77"), "{text}");
    // A role that reads work orders sees theirs, not the invoices'.
    let partly = app.audit(&wo_auditor).await;
    assert_eq!(update_of(&partly)["after"], json!({"priority": 5}));
    assert_eq!(
        invoice_of(&partly)["after"],
        json!({"number": "[redacted]"})
    );
    // Exports follow the same rule.
    let export = app
        .get("/api/v1/audit/export?format=jsonl", &auditor.access_token)
        .await;
    assert_eq!(export.status(), StatusCode::OK);
    let text = export.text().await.unwrap();
    assert!(text.contains("\"priority\":\"[redacted]\""), "{text}");
    assert!(!text.contains("Pump 7") && !text.contains("F-77"));
    let export = app
        .get("/api/v1/audit/export?format=jsonl", &admin.access_token)
        .await
        .text()
        .await
        .unwrap();
    assert!(export.contains("Pump 7") && export.contains("F-77"));
}

#[tokio::test]
async fn ctl_acc_1_an_api_key_works_expires_is_revoked_and_cannot_escalate() {
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    app.create_order(&admin, json!({"title": "Pump", "notes": "secret note"}))
        .await;
    let res = app
        .post(
            "/api/v1/api-keys",
            Some(&admin.access_token),
            json!({"name": "erp sync", "roles": ["member"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sr_key_"));
    let key_id = created["id"].as_str().unwrap().to_owned();
    // Stored hashed: the secret is nowhere in the database.
    let dump = database_dump(&app.data_dir, &app.database_url).await;
    assert!(!dump.contains(&secret[7..]), "the key's secret is stored");

    // It works as a bearer token, with its roles.
    let list = app
        .get("/api/v1/collections/work_orders/records", &secret)
        .await;
    assert_eq!(list.status(), StatusCode::OK);
    let created_by_key = app
        .post(
            "/api/v1/collections/work_orders/records",
            Some(&secret),
            json!({"title": "from the key"}),
        )
        .await;
    assert_eq!(created_by_key.status(), StatusCode::CREATED);
    // Never beyond them: no users, roles, keys, settings.
    for (method, path) in [
        (Method::GET, "/api/v1/users"),
        (Method::POST, "/api/v1/roles"),
        (Method::POST, "/api/v1/api-keys"),
        (Method::GET, "/api/v1/tenant/settings"),
    ] {
        assert_eq!(
            status_of(&app, method.clone(), path, &secret).await,
            StatusCode::FORBIDDEN,
            "{method} {path}"
        );
    }
    // It has no account: /me and the session routes refuse it.
    let me = app.get("/api/v1/me", &secret).await;
    assert_eq!(
        problem(me, StatusCode::FORBIDDEN).await["type"],
        "urn:strongroom:problem:api-key-not-allowed"
    );
    // Audited as actor type api_key.
    let events = app.audit(&admin).await;
    let by_key = events
        .iter()
        .find(|e| e["action"] == "record.create" && e["actor"]["type"] == "api_key")
        .expect("the key's create is in the trail");
    assert_eq!(by_key["actor"]["id"], key_id.as_str());
    // Last use (time and address) is recorded, in the background.
    let mut shown = Value::Null;
    for _ in 0..50 {
        shown = app
            .get(&format!("/api/v1/api-keys/{key_id}"), &admin.access_token)
            .await
            .json()
            .await
            .unwrap();
        if shown["last_used_at"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(shown["last_used_ip"], "127.0.0.1");
    assert_eq!(shown["state"], "active");
    assert!(shown.get("secret").is_none());

    // A key maker gives a key no more than they have.
    create_role(
        &app,
        &admin,
        "key_maker",
        json!(["api_keys.manage", "records.read:work_orders"]),
    )
    .await;
    create_role(&app, &admin, "wo_only", json!(["records.read:work_orders"])).await;
    let maker = app.user(&admin, "maker@acme.test", "key_maker").await;
    for roles in [
        json!(["admin"]),
        json!(["member"]),
        json!(["key_maker", "viewer"]),
    ] {
        let res = app
            .post(
                "/api/v1/api-keys",
                Some(&maker.access_token),
                json!({"name": "too much", "roles": roles}),
            )
            .await;
        problem(res, StatusCode::FORBIDDEN).await;
    }
    let narrow = app
        .post(
            "/api/v1/api-keys",
            Some(&maker.access_token),
            json!({"name": "reader", "roles": ["wo_only"]}),
        )
        .await;
    assert_eq!(narrow.status(), StatusCode::CREATED);
    let narrow: Value = narrow.json().await.unwrap();
    let narrow = narrow["secret"].as_str().unwrap();
    let list = app
        .get_json("/api/v1/collections/work_orders/records", narrow)
        .await;
    let pump = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["title"] == "Pump")
        .unwrap();
    assert_eq!(pump["notes"], "[redacted]");

    // Bad input is refused and changes nothing.
    let keys_before = app.count("SELECT COUNT(*) FROM api_keys").await;
    for body in [
        json!({"name": "", "roles": ["member"]}),
        json!({"name": "x", "roles": ["nosuch"]}),
        json!({"name": "x", "roles": ["member"], "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"name": "x", "roles": ["member"], "expires_at": "next week"}),
    ] {
        let res = app
            .post("/api/v1/api-keys", Some(&admin.access_token), body.clone())
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM api_keys").await,
        keys_before
    );

    // Revoked: the next request is refused.
    let res = app
        .delete(&format!("/api/v1/api-keys/{key_id}"), &admin.access_token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["state"], "revoked");
    let after = app
        .get("/api/v1/collections/work_orders/records", &secret)
        .await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let twice = app
        .delete(&format!("/api/v1/api-keys/{key_id}"), &admin.access_token)
        .await;
    problem(twice, StatusCode::CONFLICT).await;

    // Expiring: works until its time, then is refused by itself.
    let soon = strongroom::clock::in_seconds(3);
    let res = app
        .post(
            "/api/v1/api-keys",
            Some(&admin.access_token),
            json!({"name": "short", "roles": ["viewer"], "expires_at": soon}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let short: Value = res.json().await.unwrap();
    let short = short["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        status_of(
            &app,
            Method::GET,
            "/api/v1/collections/work_orders/records",
            &short
        )
        .await,
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(4200)).await;
    assert_eq!(
        status_of(
            &app,
            Method::GET,
            "/api/v1/collections/work_orders/records",
            &short
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    let listed = app.get_json("/api/v1/api-keys", &admin.access_token).await;
    let states = strings(&listed["items"], "state");
    assert_eq!(states, ["revoked", "active", "expired"]);

    // The tenant's IP allow-list applies to keys as to users (the test
    // client is a trusted proxy: X-Forwarded-For is the client).
    let from = |ip: &'static str, method: Method, path: &str, token: &str| {
        app.client
            .request(method, format!("{}{path}", app.address))
            .bearer_auth(token)
            .header("x-forwarded-for", ip)
    };
    let res = from(
        "203.0.113.9",
        Method::PATCH,
        "/api/v1/tenant/settings",
        &admin.access_token,
    )
    .json(&json!({"ip_allowlist": ["203.0.113.0/24"]}))
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let records = "/api/v1/collections/work_orders/records";
    let inside = from("203.0.113.10", Method::GET, records, narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(inside.status(), StatusCode::OK);
    let outside = from("198.51.100.7", Method::GET, records, narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), StatusCode::FORBIDDEN);
}

/// Every operation the registry marks with `x-permission` is refused to a
/// principal whose role grants nothing, before its body or path is read;
/// every authenticated operation without one acts on the caller's own
/// account and is refused to an API key. Enumerated from `/openapi.json`.
#[tokio::test]
async fn ctl_acc_1_every_route_checks_the_permission_the_registry_declares() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let order = app.create_order(&admin, json!({"title": "x"})).await;
    create_role(&app, &admin, "nothing", json!([])).await;
    let nobody = app.user(&admin, "nobody@acme.test", "nothing").await;
    let key: Value = app
        .post(
            "/api/v1/api-keys",
            Some(&admin.access_token),
            json!({"name": "all", "roles": ["admin"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let key = key["secret"].as_str().unwrap();
    let doc = app.openapi().await;
    let before = app.count("SELECT COUNT(*) FROM records").await;
    let (mut declared, mut own) = (0, 0);
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{name}", "work_orders")
            .replace("{id}", order["id"].as_str().unwrap())
            .replace("{file}", "00000000-0000-7000-8000-000000000000")
            .replace("{slug}", "acme");
        for (method, op) in ops.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let security = op["security"].to_string();
            if op.get("x-permission").is_some() {
                declared += 1;
                let status = status_of(&app, method.clone(), &concrete, &nobody.access_token).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} without its permission"
                );
            } else if security.contains("\"bearer\"") {
                own += 1;
                assert!(
                    path.starts_with("/api/v1/auth/") || path == "/api/v1/me",
                    "{method} {path} is authenticated but declares no permission"
                );
                let status = status_of(&app, method.clone(), &concrete, key).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} with an API key"
                );
            }
        }
    }
    assert!(declared > 40 && own > 10, "{declared} declared, {own} own");
    assert_eq!(app.count("SELECT COUNT(*) FROM records").await, before);
    let denials = app
        .count("SELECT COUNT(*) FROM audit_events WHERE outcome = 'denied'")
        .await;
    assert!(
        denials >= declared,
        "{denials} denials for {declared} operations"
    );
}

/// The delete of a role in use and its assignment race on PostgreSQL (and
/// SQLite): whatever the order, no user ends up holding a role that is
/// gone.
#[tokio::test]
async fn ctl_acc_1_racing_role_deletion_and_assignment_never_leave_a_deleted_role_held() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(app.user(&admin, &format!("u{i}@acme.test"), "viewer").await);
    }
    for round in 0..4 {
        let name = format!("temp_{round}");
        let role = create_role(&app, &admin, &name, json!(["users.read"])).await;
        let id = role["id"].as_str().unwrap().to_owned();
        let mut tasks = Vec::new();
        for user in &users {
            let (client, address, token, user_id, name) = (
                app.client.clone(),
                app.address.clone(),
                admin.access_token.clone(),
                user.user_id.clone(),
                name.clone(),
            );
            tasks.push(tokio::spawn(async move {
                client
                    .patch(format!("{address}/api/v1/users/{user_id}"))
                    .bearer_auth(token)
                    .json(&json!({"roles": ["viewer", name]}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
        let (client, address, token) = (
            app.client.clone(),
            app.address.clone(),
            admin.access_token.clone(),
        );
        let deleting = tokio::spawn(async move {
            client
                .delete(format!("{address}/api/v1/roles/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        });
        for task in tasks {
            let status = task.await.unwrap();
            assert!(
                status == StatusCode::OK || status == StatusCode::UNPROCESSABLE_ENTITY,
                "{status}"
            );
        }
        let deleted = deleting.await.unwrap();
        assert!(
            deleted == StatusCode::NO_CONTENT || deleted == StatusCode::CONFLICT,
            "{deleted}"
        );
        let roles = app
            .count(&format!("SELECT COUNT(*) FROM roles WHERE name = '{name}'"))
            .await;
        let holders = app
            .count(&format!(
                "SELECT COUNT(*) FROM users WHERE (',' || role || ',') LIKE '%,{name},%'"
            ))
            .await;
        assert!(
            roles == 1 || holders == 0,
            "round {round}: {holders} users hold the deleted role {name}"
        );
        // Move everyone back for the next round.
        for user in &users {
            let res = app
                .patch(
                    &format!("/api/v1/users/{}", user.user_id),
                    &admin.access_token,
                    json!({"roles": ["viewer"]}),
                )
                .await;
            assert_eq!(res.status(), StatusCode::OK);
        }
    }
}

/// ACC-3: an operator's account may do nothing before its second factor
/// is confirmed; a login needs the password and a fresh code.
#[tokio::test]
async fn ctl_acc_3_an_operator_confirms_a_second_factor_before_any_use_and_logs_in_with_a_fresh_code()
 {
    let app = spawn_app().await;
    let (created, invitation) =
        strongroom::operators::create(&app.state.store, "ops@strongroom.test", "operator")
            .await
            .unwrap();
    assert_eq!(created.status, "invited");
    // Bad input changes nothing.
    for (email, role) in [
        ("ops@strongroom.test", "operator"),
        ("x@y.test", "root"),
        ("nope", "support"),
    ] {
        assert!(
            strongroom::operators::create(&app.state.store, email, role)
                .await
                .is_err()
        );
    }
    let res = app
        .post(
            "/api/v1/ops/auth/accept",
            None,
            json!({"token": invitation, "password": "short"}),
        )
        .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let accepted: Value = app
        .post(
            "/api/v1/ops/auth/accept",
            None,
            json!({"token": invitation, "password": PASSWORD}),
        )
        .await
        .json()
        .await
        .unwrap();
    // The invitation works once.
    let again = app
        .post(
            "/api/v1/ops/auth/accept",
            None,
            json!({"token": invitation, "password": PASSWORD}),
        )
        .await;
    problem(again, StatusCode::UNAUTHORIZED).await;
    let restricted = accepted["token"].as_str().unwrap();
    assert!(restricted.starts_with("sr_ops_"));
    assert!(
        accepted["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let secret = base32_decode(accepted["totp_secret"].as_str().unwrap());
    // Before the factor is confirmed: no operator route, no login.
    let res = app.get("/api/v1/ops/posture", restricted).await;
    assert_eq!(
        problem(res, StatusCode::FORBIDDEN).await["type"],
        "urn:strongroom:problem:mfa-enrolment-required"
    );
    let me = app.get_json("/api/v1/ops/auth/me", restricted).await;
    assert_eq!(me["mfa_confirmed"], false);
    let early = app
        .post(
            "/api/v1/ops/auth/login",
            None,
            json!({"email": "ops@strongroom.test", "password": PASSWORD, "code": totp_code(&secret, 0)}),
        )
        .await;
    problem(early, StatusCode::UNAUTHORIZED).await;
    let wrong = app
        .post(
            "/api/v1/ops/auth/mfa/confirm",
            Some(restricted),
            json!({"code": "000000"}),
        )
        .await;
    problem(wrong, StatusCode::UNAUTHORIZED).await;
    let res = app
        .post(
            "/api/v1/ops/auth/mfa/confirm",
            Some(restricted),
            json!({"code": totp_code(&secret, 0)}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // Confirmed: the session is a full one now.
    assert_eq!(
        app.get("/api/v1/ops/posture", restricted).await.status(),
        StatusCode::OK
    );
    // A login: the password and a code whose step was not used yet.
    let login = |code: String, password: &'static str| {
        app.post(
            "/api/v1/ops/auth/login",
            None,
            json!({"email": "ops@strongroom.test", "password": password, "code": code}),
        )
    };
    problem(
        login(totp_code(&secret, 0), PASSWORD).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        login(totp_code(&secret, 1), "wrong-password-entirely-1").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let res = login(totp_code(&secret, 1), PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let token: Value = res.json().await.unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    // The same code twice: once.
    problem(
        login(totp_code(&secret, 1), PASSWORD).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        app.get("/api/v1/ops/mail", &token).await.status(),
        StatusCode::OK
    );
    // Logout ends the session at once.
    let res = app
        .post("/api/v1/ops/auth/logout", Some(&token), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/api/v1/ops/mail", &token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // No secret in the database in clear.
    let dump = database_dump(&app.data_dir, &app.database_url).await;
    assert!(!dump.contains(accepted["totp_secret"].as_str().unwrap()));
    assert!(!dump.contains(&token[7..]));
    // The live check sees one active operator, with its factor.
    let out = app
        .cli()
        .await
        .args(["verify", "--json"])
        .run()
        .await
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let acc3 = report
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "ACC-3")
        .unwrap()
        .clone();
    assert_eq!(acc3["verdict"], "pass", "{acc3}");
    assert!(
        acc3["evidence"]
            .as_str()
            .unwrap()
            .contains("1 active operator accounts (1 operator)"),
        "{acc3}"
    );
}

/// ACC-3: each operator route takes only the roles it declares.
#[tokio::test]
async fn ctl_acc_3_operator_routes_take_only_the_roles_they_declare() {
    let app = spawn_app().await;
    app.admin("acme").await;
    let doc = app.openapi().await;
    let mut tokens = std::collections::HashMap::new();
    for role in ["operator", "support", "security_officer"] {
        tokens.insert(role, app.operator(role).await);
    }
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let Some(roles) = op.get("x-operator-roles") else {
                continue;
            };
            let method: Method = method.to_uppercase().parse().unwrap();
            let concrete = path.replace("{slug}", "acme");
            for (role, token) in &tokens {
                let allowed = roles.as_array().unwrap().iter().any(|r| r == role);
                let status = status_of(&app, method.clone(), &concrete, token).await;
                if allowed {
                    assert_ne!(status, StatusCode::FORBIDDEN, "{role} {method} {path}");
                    assert_ne!(status, StatusCode::UNAUTHORIZED, "{role} {method} {path}");
                } else {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{role} {method} {path}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 18, "{checked} checks");
}

/// ACC-3: there is no route by which an operator reads tenant data: every
/// tenant route (enumerated from the registry) refuses an operator token
/// without a support grant with 403.
#[tokio::test]
async fn ctl_acc_3_an_operator_token_opens_no_tenant_data_route() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let order = app.create_order(&admin, json!({"title": "x"})).await;
    let doc = app.openapi().await;
    let mut checked = 0;
    for role in ["operator", "support", "security_officer"] {
        let token = app.operator(role).await;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            let concrete = path
                .replace("{name}", "work_orders")
                .replace("{id}", order["id"].as_str().unwrap())
                .replace("{file}", "00000000-0000-7000-8000-000000000000");
            for (method, op) in ops.as_object().unwrap() {
                let security = op["security"].to_string();
                if op.get("x-operator-roles").is_some() || !security.contains("\"bearer\"") {
                    continue;
                }
                let method: Method = method.to_uppercase().parse().unwrap();
                let status = status_of(&app, method.clone(), &concrete, &token).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} {method} {path}");
                checked += 1;
            }
        }
    }
    assert!(checked > 150, "{checked} checks");
}

/// ACC-3: the security officer records bans (and lifts them) over the API.
#[tokio::test]
async fn ctl_acc_3_a_security_officer_bans_and_lifts_an_address() {
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let admin = app.admin("acme").await;
    let officer = app.operator("security_officer").await;
    let from = |ip: &'static str| {
        app.client
            .get(format!("{}/api/v1/me", app.address))
            .bearer_auth(&admin.access_token)
            .header("x-forwarded-for", ip)
    };
    assert_eq!(
        from("198.51.100.7").send().await.unwrap().status(),
        StatusCode::OK
    );
    for body in [
        json!({"ip": "not-an-ip", "reason": "abuse"}),
        json!({"ip": "198.51.100.7"}),
    ] {
        let res = app
            .post("/api/v1/ops/bans", Some(&officer), body.clone())
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let res = app
        .post(
            "/api/v1/ops/bans",
            Some(&officer),
            json!({"ip": "198.51.100.7", "reason": "credential stuffing seen by the SOC"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let again = app
        .post(
            "/api/v1/ops/bans",
            Some(&officer),
            json!({"ip": "198.51.100.7", "reason": "again"}),
        )
        .await;
    problem(again, StatusCode::CONFLICT).await;
    let banned = from("198.51.100.7").send().await.unwrap();
    assert_eq!(
        problem(banned, StatusCode::FORBIDDEN).await["type"],
        "urn:strongroom:problem:banned"
    );
    assert_eq!(
        from("198.51.100.8").send().await.unwrap().status(),
        StatusCode::OK
    );
    let listed = app.get_json("/api/v1/ops/bans", &officer).await;
    assert!(
        listed["items"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("credential stuffing")
    );
    let res = app.delete("/api/v1/ops/bans/198.51.100.7", &officer).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        from("198.51.100.7").send().await.unwrap().status(),
        StatusCode::OK
    );
    let res = app.delete("/api/v1/ops/bans/198.51.100.7", &officer).await;
    problem(res, StatusCode::NOT_FOUND).await;
}

/// ACC-3: racing logins with one code (and racing accepts of one
/// invitation) succeed once, on PostgreSQL as on SQLite.
#[tokio::test]
async fn ctl_acc_3_racing_logins_with_one_code_open_one_session() {
    let app = spawn_app().await;
    let (_, invitation) =
        strongroom::operators::create(&app.state.store, "race@ops.test", "operator")
            .await
            .unwrap();
    let accepts = (0..4).map(|_| {
        app.post(
            "/api/v1/ops/auth/accept",
            None,
            json!({"token": invitation, "password": PASSWORD}),
        )
    });
    let answers = futures_util::future::join_all(accepts).await;
    let mut accepted = Vec::new();
    for res in answers {
        if res.status() == StatusCode::OK {
            accepted.push(res.json::<Value>().await.unwrap());
        } else {
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        }
    }
    assert_eq!(accepted.len(), 1, "one accept spends the invitation");
    let secret = base32_decode(accepted[0]["totp_secret"].as_str().unwrap());
    let restricted = accepted[0]["token"].as_str().unwrap().to_owned();
    let res = app
        .post(
            "/api/v1/ops/auth/mfa/confirm",
            Some(&restricted),
            json!({"code": totp_code(&secret, 0)}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let code = totp_code(&secret, 1);
    let logins = (0..6).map(|_| {
        app.post(
            "/api/v1/ops/auth/login",
            None,
            json!({"email": "race@ops.test", "password": PASSWORD, "code": code}),
        )
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(logins)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    let opened = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(opened, 1, "{statuses:?}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM operator_sessions WHERE mfa_passed = 1")
            .await,
        2,
        "the confirmed session and one login"
    );
}

/// ACC-1, NET-3: an API key is limited like a user: a burst beyond the
/// per-user rate gets 429, and the key's own budget is its own.
#[tokio::test]
async fn ctl_acc_1_an_api_key_is_rate_limited_like_a_user() {
    let app = spawn_app_with(|c| {
        c.requests_per_second_per_user = 5;
        c.requests_per_second_per_ip = 1000;
    })
    .await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let key = app
        .post(
            "/api/v1/api-keys",
            Some(&admin.access_token),
            json!({"name": "burst", "roles": ["viewer"]}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let records = format!("{}/api/v1/collections/work_orders/records", app.address);
    let burst = (0..20).map(|_| app.client.get(&records).bearer_auth(&key).send());
    let statuses: Vec<StatusCode> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!((1..=8).contains(&ok) && ok + limited == 20, "{statuses:?}");
    // The admin's own budget is untouched by the key's burst.
    assert_eq!(
        app.get("/api/v1/me", &admin.access_token).await.status(),
        StatusCode::OK
    );
}
