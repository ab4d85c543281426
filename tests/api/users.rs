use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn ctl_acc_1_each_built_in_role_gets_exactly_its_permissions() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let member = app.user(&admin, "member@acme.test", "member").await;
    let viewer = app.user(&admin, "viewer@acme.test", "viewer").await;
    let record = app.create_order(&admin, json!({"title": "seed"})).await;
    let record_path = format!(
        "/api/v1/collections/work_orders/records/{}",
        record["id"].as_str().unwrap()
    );

    // (who, operation, expected status)
    let cases: Vec<(&str, &str, &str, Option<Value>, StatusCode)> = vec![
        ("viewer", "GET", "/api/v1/collections", None, StatusCode::OK),
        (
            "viewer",
            "GET",
            "/api/v1/collections/work_orders/records",
            None,
            StatusCode::OK,
        ),
        ("viewer", "GET", &record_path, None, StatusCode::OK),
        (
            "viewer",
            "POST",
            "/api/v1/collections/work_orders/records",
            Some(json!({"title": "x"})),
            StatusCode::FORBIDDEN,
        ),
        (
            "viewer",
            "PATCH",
            &record_path,
            Some(json!({"title": "x"})),
            StatusCode::FORBIDDEN,
        ),
        (
            "viewer",
            "DELETE",
            &record_path,
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "viewer",
            "GET",
            "/api/v1/users",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "viewer",
            "GET",
            "/api/v1/audit",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "member",
            "POST",
            "/api/v1/collections/work_orders/records",
            Some(json!({"title": "x"})),
            StatusCode::CREATED,
        ),
        (
            "member",
            "PATCH",
            &record_path,
            Some(json!({"title": "y"})),
            StatusCode::OK,
        ),
        (
            "member",
            "POST",
            "/api/v1/collections",
            Some(json!({"name": "c", "fields": []})),
            StatusCode::FORBIDDEN,
        ),
        (
            "member",
            "DELETE",
            "/api/v1/collections/work_orders",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "member",
            "POST",
            "/api/v1/users",
            Some(json!({"email": "e@acme.test", "role": "admin"})),
            StatusCode::FORBIDDEN,
        ),
        (
            "member",
            "GET",
            "/api/v1/audit",
            None,
            StatusCode::FORBIDDEN,
        ),
        ("admin", "GET", "/api/v1/users", None, StatusCode::OK),
        ("admin", "GET", "/api/v1/audit", None, StatusCode::OK),
        (
            "admin",
            "POST",
            "/api/v1/collections",
            Some(json!({"name": "assets", "fields": []})),
            StatusCode::CREATED,
        ),
        (
            "member",
            "DELETE",
            &record_path,
            None,
            StatusCode::NO_CONTENT,
        ),
    ];
    for (who, method, path, body, expected) in cases {
        let token = match who {
            "admin" => &admin.access_token,
            "member" => &member.access_token,
            _ => &viewer.access_token,
        };
        let res = app
            .request(method.parse().unwrap(), path, Some(token), body)
            .await;
        assert_eq!(res.status(), expected, "{who} {method} {path}");
    }
    // /me lists the permissions of the role.
    let me: Value = app
        .get("/api/v1/me", &viewer.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        me["permissions"],
        json!(["collections.read", "records.read", "records.read_personal"])
    );
}

#[tokio::test]
async fn ctl_acc_1_a_denied_operation_is_403_and_an_audit_event_with_outcome_denied() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let viewer = app.user(&admin, "viewer@acme.test", "viewer").await;
    let res = app
        .post(
            "/api/v1/collections/work_orders/records",
            Some(&viewer.access_token),
            json!({"title": "x"}),
        )
        .await;
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert!(body["detail"].as_str().unwrap().contains("records.write"));
    assert_eq!(app.count("SELECT COUNT(*) FROM records").await, 0);
    let events = app.audit(&admin).await;
    let denied = events
        .iter()
        .find(|e| e["outcome"] == "denied")
        .expect("denial audited");
    assert_eq!(denied["action"], "record.create");
    assert_eq!(denied["actor"]["id"], viewer.user_id.as_str());
    // The collection the path names: records.write or
    // records.write:work_orders would each have allowed it.
    assert_eq!(denied["target"]["id"], "records.write:work_orders");
    assert_eq!(denied["request_id"], request_id.as_str());
}

#[tokio::test]
async fn admins_invite_list_read_change_and_delete_users() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let res = app
        .post(
            "/api/v1/users",
            Some(&admin.access_token),
            json!({"email": "New.Person@Acme.test", "role": "member"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["email"], "new.person@acme.test");
    assert_eq!(created["status"], "invited");
    assert!(
        created["invitation_token"]
            .as_str()
            .unwrap()
            .starts_with("sr_inv_")
    );
    let id = created["id"].as_str().unwrap();

    let dup = app
        .post(
            "/api/v1/users",
            Some(&admin.access_token),
            json!({"email": "new.person@acme.test", "role": "viewer"}),
        )
        .await;
    problem(dup, StatusCode::CONFLICT).await;
    let bad_role = app
        .post(
            "/api/v1/users",
            Some(&admin.access_token),
            json!({"email": "x@acme.test", "role": "owner"}),
        )
        .await;
    assert_eq!(
        problem(bad_role, StatusCode::UNPROCESSABLE_ENTITY).await["field"],
        "role"
    );
    let bad_email = app
        .post(
            "/api/v1/users",
            Some(&admin.access_token),
            json!({"email": "not-an-email", "role": "viewer"}),
        )
        .await;
    assert_eq!(
        problem(bad_email, StatusCode::UNPROCESSABLE_ENTITY).await["field"],
        "email"
    );

    let list: Value = app
        .get("/api/v1/users", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let path = format!("/api/v1/users/{id}");
    let one: Value = app
        .get(&path, &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["role"], "member");
    assert!(one.get("password_hash").is_none());
    let changed: Value = app
        .patch(&path, &admin.access_token, json!({"role": "viewer"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(changed["role"], "viewer");
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
        app.get("/api/v1/users/not-a-uuid", &admin.access_token)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let events = app.audit(&admin).await;
    for action in ["user.create", "user.update", "user.delete"] {
        assert!(
            events
                .iter()
                .any(|e| e["action"] == action && e["outcome"] == "success"),
            "{action}"
        );
    }
    let update = events
        .iter()
        .find(|e| e["action"] == "user.update")
        .unwrap();
    assert_eq!(
        update["changes"]["before"],
        json!({"role": "member", "updated_at": one["updated_at"]})
    );
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_demoted_disabled_or_deleted() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let path = format!("/api/v1/users/{}", admin.user_id);
    problem(
        app.patch(&path, &admin.access_token, json!({"role": "member"}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    problem(
        app.patch(&path, &admin.access_token, json!({"status": "disabled"}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    problem(
        app.delete(&path, &admin.access_token).await,
        StatusCode::CONFLICT,
    )
    .await;
    let second = app.user(&admin, "second@acme.test", "admin").await;
    assert_eq!(
        app.patch(&path, &second.access_token, json!({"role": "member"}))
            .await
            .status(),
        StatusCode::OK
    );
}
