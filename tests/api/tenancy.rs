use crate::helpers::RunOff;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::Row;
use strongroom::store::db;

use crate::helpers::{
    CREATE_ACME, cli, cli_json, fresh_database, is_postgres, problem, spawn_app, temp_dir,
};

#[tokio::test]
async fn ctl_ten_1_a_tenant_never_sees_or_touches_another_tenants_data() {
    let app = spawn_app().await;
    let a = app.admin("acme").await;
    let b = app.admin("globex").await;
    app.work_orders(&a).await;
    app.work_orders(&b).await;
    let record = app
        .create_order(&a, json!({"title": "Acme secret pump", "code": "A-1"}))
        .await;
    let id = record["id"].as_str().unwrap();
    let path = format!("/api/v1/collections/work_orders/records/{id}");

    // B uses the same collection name; A's record does not exist for B: 404, not 403.
    problem(app.get(&path, &b.access_token).await, StatusCode::NOT_FOUND).await;
    problem(
        app.patch(&path, &b.access_token, json!({"title": "pwned"}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.delete(&path, &b.access_token).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let list: Value = app
        .get("/api/v1/collections/work_orders/records", &b.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    // Unique values are per collection, hence per tenant: B may reuse A's code.
    app.create_order(&b, json!({"title": "Globex pump", "code": "A-1"}))
        .await;
    // Users and the audit trail are tenant-scoped too.
    problem(
        app.get(&format!("/api/v1/users/{}", a.user_id), &b.access_token)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let users: Value = app
        .get("/api/v1/users", &b.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        users["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["email"] != a.email.as_str())
    );
    let trail = app
        .audit(&b)
        .await
        .into_iter()
        .map(|e| e.to_string())
        .collect::<String>();
    assert!(!trail.contains(id) && !trail.contains(&a.user_id) && !trail.contains("Acme secret"));
    // Collections: B's own collection is invisible to A, by listing and by name.
    let res = app
        .post(
            "/api/v1/collections",
            Some(&b.access_token),
            json!({"name": "globex_private", "fields": [{"name": "x", "type": "text"}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let listed = app
        .get("/api/v1/collections", &a.access_token)
        .await
        .text()
        .await
        .unwrap();
    assert!(!listed.contains("globex_private"));
    for path in [
        "/api/v1/collections/globex_private",
        "/api/v1/collections/globex_private/records",
    ] {
        problem(app.get(path, &a.access_token).await, StatusCode::NOT_FOUND).await;
    }
    problem(
        app.delete("/api/v1/collections/globex_private", &a.access_token)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // A's record is untouched.
    let again: Value = app.get(&path, &a.access_token).await.json().await.unwrap();
    assert_eq!(again["title"], "Acme secret pump");
    assert_eq!(again["version"], 1);
}

#[tokio::test]
async fn ctl_ten_2_row_level_security_holds_when_a_query_forgets_the_tenant_filter() {
    let app = spawn_app().await;
    let a = app.admin("acme").await;
    let b = app.admin("globex").await;
    app.work_orders(&a).await;
    app.work_orders(&b).await;
    for i in 0..3 {
        app.create_order(&a, json!({"title": format!("a{i}")}))
            .await;
    }
    for i in 0..5 {
        app.create_order(&b, json!({"title": format!("b{i}")}))
            .await;
    }
    // Authenticate as A the way every request does, and open A's read scope.
    let principal = strongroom::identity::authenticate(
        &app.state.store,
        app.state.keyring.token_verifying_key(),
        &SecretString::from(a.access_token.clone()),
    )
    .await
    .unwrap();
    let mut tx = app.state.store.read(principal.scope()).await.unwrap();
    // A query with no tenant filter at all.
    let seen: i64 = db::query_scalar("SELECT COUNT(*) FROM records")
        .fetch_one(tx.conn())
        .await
        .unwrap();
    let users: i64 = db::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(tx.conn())
        .await
        .unwrap();
    drop(tx);
    assert_eq!(app.count("SELECT COUNT(*) FROM records").await, 8);
    if is_postgres() {
        assert_eq!(seen, 3, "RLS must confine an unfiltered query to tenant A");
        assert_eq!(users, 1);
        // Outside any scope the application role sees no tenant rows at all.
        let mut conn = app.raw().await;
        sqlx::query("SET ROLE strongroom_app")
            .execute(&mut conn)
            .await
            .unwrap();
        let none: i64 = sqlx::query("SELECT COUNT(*) FROM records")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(none, 0);
        // And it cannot write a row into another tenant (WITH CHECK).
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(&a.tenant_id)
            .execute(&mut conn)
            .await
            .unwrap();
        let forged =
            sqlx::query("INSERT INTO tenant_sequences (tenant_id) VALUES (CAST($1 AS uuid))")
                .bind(&b.tenant_id)
                .execute(&mut conn)
                .await;
        assert!(
            forged
                .as_ref()
                .is_err_and(|e| e.to_string().contains("row-level security")),
            "RLS WITH CHECK must refuse a row of another tenant: {forged:?}"
        );
    } else {
        // SQLite has no RLS: there the typed TenantScope in every query is the only
        // wall, which the ctl_ten_1 and ctl_ten_2 request tests exercise.
        assert_eq!(seen, 8);
    }
}

/// A tiny deterministic generator, so a failure can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

#[tokio::test]
async fn ctl_ten_2_random_requests_with_one_tenants_token_never_reveal_the_others_data() {
    let app = spawn_app().await;
    let a = app.admin("acme").await;
    let b = app.admin("globex").await;
    app.work_orders(&a).await;
    app.work_orders(&b).await;
    let b_member = app.user(&b, "worker@globex.test", "member").await;
    let marker = "GLOBEX-CONFIDENTIAL";
    let mut b_ids = vec![
        b.user_id.clone(),
        b_member.user_id.clone(),
        b.tenant_id.clone(),
    ];
    for i in 0..5 {
        let r = app
            .create_order(
                &b,
                json!({"title": format!("{marker} {i}"), "code": format!("G{i}")}),
            )
            .await;
        b_ids.push(r["id"].as_str().unwrap().to_owned());
    }
    app.create_order(&a, json!({"title": "acme's own"})).await;
    let before = app.count("SELECT COUNT(*) FROM records").await;

    let mut rng = Lcg(0x5eed);
    let methods = [Method::GET, Method::PATCH, Method::DELETE];
    let templates = [
        "/api/v1/collections/work_orders/records/{id}",
        "/api/v1/users/{id}",
        "/api/v1/collections/work_orders/records?filter[code]=G{n}",
        "/api/v1/collections/work_orders/records?limit=200",
        "/api/v1/audit?limit=500",
        "/api/v1/users",
    ];
    for _ in 0..300 {
        let id = &b_ids[rng.next(b_ids.len())];
        let path = templates[rng.next(templates.len())]
            .replace("{id}", id)
            .replace("{n}", &rng.next(5).to_string());
        let method = methods[rng.next(methods.len())].clone();
        let body = (method == Method::PATCH).then(|| json!({"title": "overwritten"}));
        let res = app
            .request(method.clone(), &path, Some(&a.access_token), body)
            .await;
        let status = res.status();
        assert!(!status.is_server_error(), "{method} {path} gave {status}");
        let text = res.text().await.unwrap();
        assert!(
            !text.contains(marker),
            "{method} {path} leaked B's data: {text}"
        );
        for b_id in &b_ids {
            if path.contains(b_id.as_str()) {
                continue; // the id the caller sent may be echoed in a problem detail
            }
            assert!(
                !text.contains(b_id.as_str()),
                "{method} {path} revealed B's id {b_id}"
            );
        }
    }
    // Nothing of B's changed.
    assert_eq!(app.count("SELECT COUNT(*) FROM records").await, before);
    let list: Value = app
        .get("/api/v1/collections/work_orders/records", &b.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["title"].as_str().unwrap().starts_with(marker))
    );
}

#[tokio::test]
async fn cli_tenant_create_and_list_print_json_and_work_on_the_configured_database() {
    let dir = temp_dir("cli");
    let url = fresh_database(&dir).await;
    let created = cli_json(&dir, &url, CREATE_ACME);
    assert!(created["tenant_id"].is_string());
    assert!(
        created["invitation_token"]
            .as_str()
            .unwrap()
            .starts_with("sr_inv_")
    );

    let dup = cli(&dir, &url)
        .args([
            "tenant",
            "create",
            "--slug",
            "acme",
            "--name",
            "Other",
            "--admin-email",
            "x@y.test",
        ])
        .run()
        .await
        .unwrap();
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let bad = cli(&dir, &url)
        .args([
            "tenant",
            "create",
            "--slug",
            "Bad Slug",
            "--name",
            "x",
            "--admin-email",
            "x@y.test",
        ])
        .run()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("slug"));

    let tenants = cli_json(&dir, &url, &["tenant", "list", "--json"]);
    assert_eq!(tenants.as_array().unwrap().len(), 1);
    assert_eq!(tenants[0]["slug"], "acme");
    assert_eq!(tenants[0]["id"], created["tenant_id"]);

    // The CLI's action is in the tenant's audit trail, with the operator as actor.
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let row = sqlx::query("SELECT action, actor_type FROM audit_events WHERE seq = 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "tenant.create");
    assert_eq!(row.get::<String, _>(1), "operator");
}

#[tokio::test]
async fn unknown_database_url_schemes_are_refused_with_a_clear_message() {
    let dir = temp_dir("scheme");
    let out = cli(&dir, "mysql://root@localhost/db")
        .args(["migrate"])
        .run()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unsupported database URL scheme \"mysql\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn ctl_net_2_an_allow_listed_tenant_refuses_other_addresses_and_guards_against_lockout() {
    // The test client is 127.0.0.1, a trusted proxy: X-Forwarded-For then
    // stands for the client's address.
    let app =
        crate::helpers::spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let admin = app.admin("acme").await;
    let from = |ip: &'static str, method: reqwest::Method, path: &str| {
        app.client
            .request(method, format!("{}{path}", app.address))
            .bearer_auth(&admin.access_token)
            .header("x-forwarded-for", ip)
    };
    let office = "203.0.113.0/24";
    // A list that leaves out the caller's own address is refused …
    let res = from(
        "198.51.100.7",
        reqwest::Method::PATCH,
        "/api/v1/tenant/settings",
    )
    .json(&json!({"ip_allowlist": [office]}))
    .send()
    .await
    .unwrap();
    let body = problem(res, StatusCode::CONFLICT).await;
    assert_eq!(body["type"], "urn:strongroom:problem:lockout");
    assert_eq!(body["field"], "ip_allowlist");
    // … and a malformed one is a 422 that changes nothing.
    let res = from(
        "203.0.113.9",
        reqwest::Method::PATCH,
        "/api/v1/tenant/settings",
    )
    .json(&json!({"ip_allowlist": ["203.0.113.0/33"]}))
    .send()
    .await
    .unwrap();
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    // From inside the office it saves.
    let res = from(
        "203.0.113.9",
        reqwest::Method::PATCH,
        "/api/v1/tenant/settings",
    )
    .json(&json!({"ip_allowlist": [office, "2001:db8::/32"]}))
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let saved: Value = res.json().await.unwrap();
    assert_eq!(saved["ip_allowlist"], json!([office, "2001:db8::/32"]));

    // Inside: served. Outside: 403 before any data is read, audited.
    let res = from("203.0.113.77", reqwest::Method::GET, "/api/v1/me")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = from("2001:db8::5", reqwest::Method::GET, "/api/v1/me")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = from("198.51.100.7", reqwest::Method::GET, "/api/v1/collections")
        .send()
        .await
        .unwrap();
    let body = problem(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["type"], "urn:strongroom:problem:ip-not-allowed");
    let denied = app
        .count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'tenant.ip_denied' \
             AND outcome = 'denied' AND target_id = '198.51.100.7'",
        )
        .await;
    assert_eq!(denied, 1);

    // Login and invitation acceptance are refused the same way.
    let login = |ip: &'static str| {
        app.client
            .post(format!("{}/api/v1/auth/login", app.address))
            .header("x-forwarded-for", ip)
            .json(&json!({"tenant": "acme", "email": "admin@acme.test", "password": crate::helpers::PASSWORD}))
            .send()
    };
    let body = problem(login("198.51.100.7").await.unwrap(), StatusCode::FORBIDDEN).await;
    assert_eq!(body["type"], "urn:strongroom:problem:ip-not-allowed");
    assert_eq!(login("203.0.113.9").await.unwrap().status(), StatusCode::OK);
    let invited: Value = from("203.0.113.9", reqwest::Method::POST, "/api/v1/users")
        .json(&json!({"email": "new@acme.test", "role": "member"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let accept = |ip: &'static str| {
        app.client
            .post(format!("{}/api/v1/auth/invitations/accept", app.address))
            .header("x-forwarded-for", ip)
            .json(&json!({"token": invited["invitation_token"], "password": crate::helpers::PASSWORD}))
            .send()
    };
    let body = problem(accept("198.51.100.7").await.unwrap(), StatusCode::FORBIDDEN).await;
    assert_eq!(body["type"], "urn:strongroom:problem:ip-not-allowed");

    // An operator can clear the list; everyone is let in again at once.
    let out = app
        .cli_ok(&["tenant", "clear-allowlist", "--tenant", "acme"])
        .await;
    assert!(out.contains("2 entries"), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let res = from("198.51.100.7", reqwest::Method::GET, "/api/v1/me")
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused after the list was cleared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        accept("198.51.100.7").await.unwrap().status(),
        StatusCode::OK
    );
}
