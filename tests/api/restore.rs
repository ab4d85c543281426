//! BAK-2 and BAK-4: snapshots and restores from a real backup target (a
//! local directory; on the PostgreSQL run, the S3-compatible server), run
//! through the CLI as an operator would, checked through the API.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use strongroom::backup::ship;

use crate::backups::{
    backup_url, journal_seq, raw_objects, shipper, spawn_with_backups, spawn_with_backups_and,
};
use crate::helpers::{PASSWORD, RunOff, Session, TestApp, spawn_app_with, temp_dir};

/// Waits until the target holds the tenant's journal up to its counter.
async fn shipped(
    app: &TestApp,
    target: &strongroom::backup::BackupTarget,
    session: &Session,
) -> i64 {
    let wanted = journal_seq(app, session).await;
    let waited = Instant::now();
    loop {
        let listing = ship::list(target, &session.tenant_id).await.unwrap();
        if listing.last >= Some(wanted) {
            return wanted;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "seq {wanted} not shipped: {listing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tenant's work order listing (up to 100, in one page).
async fn listed(app: &TestApp, session: &Session) -> reqwest::Response {
    app.get(
        "/api/v1/collections/work_orders/records?limit=100",
        &session.access_token,
    )
    .await
}

/// The status of the tenant's work order listing.
async fn listing(app: &TestApp, session: &Session) -> StatusCode {
    listed(app, session).await.status()
}

/// The tenant's listing answers 503 with Retry-After: its problem.
async fn unavailable(app: &TestApp, session: &Session) -> Value {
    let res = listed(app, session).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    res.json().await.unwrap()
}

/// The tenant's work orders as the API shows them, oldest first.
async fn orders(app: &TestApp, session: &Session) -> Vec<Value> {
    let res = listed(app, session).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let mut items = body["items"].as_array().unwrap().clone();
    items.sort_by_key(|r| r["id"].as_str().unwrap().to_owned());
    items
}

async fn login_status(app: &TestApp, slug: &str, email: &str) -> StatusCode {
    app.post(
        "/api/v1/auth/login",
        None,
        json!({"tenant": slug, "email": email, "password": PASSWORD}),
    )
    .await
    .status()
}

async fn log_in(app: &TestApp, slug: &str, email: &str, tenant_id: &str) -> Session {
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"tenant": slug, "email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let body: Value = res.json().await.unwrap();
    Session {
        access_token: body["access_token"].as_str().unwrap().to_owned(),
        refresh_token: body["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        user_id: String::new(),
        tenant_id: tenant_id.to_owned(),
        email: email.to_owned(),
    }
}

/// The CLI's outcome: whether it succeeded, and everything it printed.
async fn cli_run(app: &TestApp, args: &[&str], envs: &[(&str, String)]) -> (bool, String) {
    let mut cmd = app.cli().await;
    cmd.env("STRONGROOM_BACKUP", "true")
        .envs(envs.iter().map(|(k, v)| (*k, v.clone())))
        .args(args);
    let out = cmd.run().await.unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn ctl_bak_4_a_tenant_restores_to_a_point_in_time_while_another_keeps_writing() {
    let app = spawn_with_backups(backup_url()).await;
    let (target, shipper) = shipper(&app);
    ship::start(app.state.store.clone(), &app.state.schedule, shipper);
    let acme = app.admin("acme").await;
    app.work_orders(&acme).await;
    for i in 0..5 {
        app.create_order(&acme, json!({"title": format!("first-{i}"), "notes": format!("sealed-{i}"), "code": format!("c{i}")}))
            .await;
    }
    let (ok, out) = cli_run(&app, &["backup", "now", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    // Changes after the snapshot, up to the point restored to.
    let mut kept = Vec::new();
    for i in 0..5 {
        kept.push(
            app.create_order(
                &acme,
                json!({"title": format!("second-{i}"), "notes": "n", "code": format!("d{i}")}),
            )
            .await,
        );
    }
    let point = shipped(&app, &target, &acme).await;
    let at_point = orders(&app, &acme).await;
    assert_eq!(at_point.len(), 10);

    // Then edits, a deletion and new rows that the restore must undo.
    let victim = kept[0]["id"].as_str().unwrap().to_owned();
    let res = app
        .patch(
            &format!("/api/v1/collections/work_orders/records/{victim}"),
            &acme.access_token,
            json!({"title": "changed later", "notes": "changed later"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let gone = kept[1]["id"].as_str().unwrap().to_owned();
    let res = app
        .delete(
            &format!("/api/v1/collections/work_orders/records/{gone}"),
            &acme.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for i in 0..3 {
        app.create_order(&acme, json!({"title": format!("late-{i}")}))
            .await;
    }
    app.user(&acme, "late@acme.test", "member").await;
    shipped(&app, &target, &acme).await;

    // Another tenant writes all through the restore.
    let globex = app.admin("globex").await;
    app.work_orders(&globex).await;
    let to = format!("seq:{point}");
    let args = ["backup", "restore", "--tenant", "acme", "--to", &to];
    let restoring = cli_run(&app, &args, &[]);
    let writing = async {
        let mut made = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            app.create_order(&globex, json!({"title": format!("globex-{made}")}))
                .await;
            made += 1;
        }
        made
    };
    let ((ok, out), made) = tokio::join!(restoring, writing);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("to journal seq {point}")), "{out}");

    // Every session of the tenant ended; its admin signs in again.
    let acme_again = log_in(&app, "acme", &acme.email, &acme.tenant_id).await;
    assert_eq!(
        orders(&app, &acme_again).await,
        at_point,
        "the tenant is exactly as it was at seq {point}, sealed values included"
    );
    let res = app
        .get("/api/v1/users?limit=100", &acme_again.access_token)
        .await;
    let users: Value = res.json().await.unwrap();
    assert!(
        !users.to_string().contains("late@acme.test"),
        "a user invited after the point is gone: {users}"
    );
    // The other tenant lost nothing and was never refused.
    let globex_rows = app
        .count(&format!(
            "SELECT COUNT(*) FROM records WHERE tenant_id = '{}'",
            globex.tenant_id
        ))
        .await;
    assert_eq!(globex_rows, made);

    // The trail kept everything, the restore included, and still verifies.
    let (ok, out) = cli_run(&app, &["audit", "verify", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM audit_events WHERE tenant_id = '{}' AND action = 'backup.restored'",
            acme.tenant_id
        ))
        .await,
        1
    );

    // Shipping resumes from the restored state, and a second restore to
    // the latest point starts from the snapshot taken after the first.
    let after = app
        .create_order(&acme_again, json!({"title": "after the restore"}))
        .await;
    shipped(&app, &target, &acme_again).await;
    let (ok, out) = cli_run(&app, &["backup", "restore", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    let acme_third = log_in(&app, "acme", &acme.email, &acme.tenant_id).await;
    let now = orders(&app, &acme_third).await;
    assert_eq!(now.len(), at_point.len() + 1);
    assert!(now.iter().any(|r| r["id"] == after["id"]));

    // Bad points are refused with a clear error and change nothing.
    for (to, says) in [
        ("seq:0", "not a journal seq"),
        ("yesterday", "RFC 3339"),
        ("seq:999999999", "beyond what the target holds"),
    ] {
        let (ok, out) = cli_run(
            &app,
            &["backup", "restore", "--tenant", "acme", "--to", to],
            &[],
        )
        .await;
        assert!(!ok && out.contains(says), "{to}: {out}");
    }
    assert_eq!(orders(&app, &acme_third).await, now);

    // Or into a new instance beside this one (SQLite), which then serves it.
    if std::env::var("STRONGROOM_TEST_PG_URL").is_err() {
        let into = temp_dir("restored").join("instance");
        let (ok, out) = cli_run(
            &app,
            &[
                "backup",
                "restore",
                "--tenant",
                "acme",
                "--into-new-instance",
                into.to_str().unwrap(),
            ],
            &[],
        )
        .await;
        assert!(ok && out.contains("the new instance is in"), "{out}");
        let (ok, out) = cli_run(
            &app,
            &["audit", "verify"],
            &[
                ("STRONGROOM_DATA_DIR", into.display().to_string()),
                (
                    "STRONGROOM_DATABASE_URL",
                    format!("sqlite://{}/strongroom.db", into.display()),
                ),
            ],
        )
        .await;
        assert!(ok && out.contains(": ok ("), "{out}");
    }

    // Nothing in the target is readable: no sealed value, no title, no
    // e-mail address.
    for (key, bytes) in raw_objects(&target).await {
        for needle in [
            &b"sealed-1"[..],
            b"second-1",
            b"late@acme.test",
            b"admin@acme",
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{key} shows {}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

/// A record with a photo: its id, the file's id and the bytes.
async fn attach_photo(app: &TestApp, session: &Session) -> (String, String, Vec<u8>) {
    let res = app
        .post(
            "/api/v1/collections",
            Some(&session.access_token),
            json!({"name": "assets", "fields": [
                {"name": "title", "type": "text", "required": true},
                {"name": "photos", "type": "file", "max_files": 3}
            ]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app
        .post(
            "/api/v1/collections/assets/records",
            Some(&session.access_token),
            json!({"title": "Pump 7"}),
        )
        .await;
    let record: Value = res.json().await.unwrap();
    let record = record["id"].as_str().unwrap().to_owned();
    let mut photo = b"\x89PNG\r\n\x1a\n".to_vec();
    photo.extend(format!("photo-plaintext-{}", uuid::Uuid::new_v4().simple()).bytes());
    photo.extend(std::iter::repeat_n(7u8, 100_000));
    let res = app
        .upload(
            &session.access_token,
            &format!("/api/v1/collections/assets/records/{record}/files/photos"),
            "pump.png",
            "image/png",
            &photo,
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
    let info: Value = res.json().await.unwrap();
    (record, info["id"].as_str().unwrap().to_owned(), photo)
}

#[tokio::test]
async fn ctl_bak_4_the_whole_instance_restores_onto_an_empty_one_from_the_target_alone() {
    let url = backup_url();
    let app = spawn_with_backups(url.clone()).await;
    let (target, shipper) = shipper(&app);
    ship::start(app.state.store.clone(), &app.state.schedule, shipper);
    let acme = app.admin("acme").await;
    app.work_orders(&acme).await;
    let globex = app.admin("globex").await;
    app.work_orders(&globex).await;
    let (ok, out) = cli_run(&app, &["backup", "now"], &[]).await;
    assert!(ok, "{out}");
    for i in 0..20 {
        app.create_order(
            &acme,
            json!({"title": format!("acme-{i}"), "notes": format!("secret-{i}")}),
        )
        .await;
        app.create_order(&globex, json!({"title": format!("globex-{i}")}))
            .await;
    }
    // A file, whose object the target must hold too.
    let (record, file_id, photo) = attach_photo(&app, &acme).await;
    shipped(&app, &target, &acme).await;
    shipped(&app, &target, &globex).await;
    let (acme_orders, globex_orders) = (orders(&app, &acme).await, orders(&app, &globex).await);

    // The machine is gone: a new, empty instance with the same master key
    // and the backup target is all there is.
    let key = std::fs::read(app.data_dir.join("master.key")).unwrap();
    let restored = spawn_app_with(move |c| {
        c.backup = true;
        c.backup_url = Some(url);
        if c.object_store_url.is_some() {
            c.backup_access_key_id = Some("test".to_owned());
            c.backup_secret_access_key = Some(secrecy::SecretString::from("test"));
        }
        use std::os::unix::fs::PermissionsExt;
        let path = c.data_dir.join("master.key");
        std::fs::write(&path, &key).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    })
    .await;
    let (ok, out) = cli_run(&restored, &["backup", "restore", "--all"], &[]).await;
    assert!(ok, "{out}");
    assert_eq!(out.matches("restored ").count(), 2, "{out}");
    let acme2 = log_in(&restored, "acme", &acme.email, &acme.tenant_id).await;
    let globex2 = log_in(&restored, "globex", &globex.email, &globex.tenant_id).await;
    assert_eq!(orders(&restored, &acme2).await, acme_orders);
    assert_eq!(orders(&restored, &globex2).await, globex_orders);
    let res = restored
        .get(
            &format!("/api/v1/collections/assets/records/{record}/files/{file_id}"),
            &acme2.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.bytes().await.unwrap().to_vec(),
        photo,
        "the file, byte for byte"
    );
    let (ok, out) = cli_run(&restored, &["audit", "verify"], &[]).await;
    assert!(ok, "{out}");

    for (key, bytes) in raw_objects(&target).await {
        let needle = &photo[8..40];
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{key} holds the photo in clear"
        );
    }

    // The instance's own snapshot is there too, and the report shows it.
    let (_, out) = cli_run(&app, &["verify", "--json"], &[]).await;
    let report: Vec<Value> =
        serde_json::from_str(out.lines().rfind(|l| l.starts_with('[')).unwrap()).unwrap();
    let bak3 = report.iter().find(|c| c["id"] == "BAK-3").unwrap();
    assert_eq!(bak3["verdict"], "pass", "{bak3}");

    // A second --all onto a populated instance is refused.
    let (ok, out) = cli_run(&restored, &["backup", "restore", "--all"], &[]).await;
    assert!(!ok && out.contains("empty instance"), "{out}");
}

#[tokio::test]
async fn ctl_bak_4_destroyed_keys_shred_the_backups_and_no_restore_brings_them_back() {
    let app = spawn_with_backups(backup_url()).await;
    let (target, shipper) = shipper(&app);
    ship::start(app.state.store.clone(), &app.state.schedule, shipper);
    let acme = app.admin("acme").await;
    app.work_orders(&acme).await;
    app.create_order(&acme, json!({"title": "t", "notes": "sealed"}))
        .await;
    let (ok, out) = cli_run(&app, &["backup", "now", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    shipped(&app, &target, &acme).await;
    let keys = format!("t/{}/keys/", acme.tenant_id);
    assert!(!target.keys(&keys).await.unwrap().is_empty());

    let (ok, out) = cli_run(&app, &["keys", "destroy", "--tenant", "acme", "--yes"], &[]).await;
    assert!(ok, "{out}");
    let waited = Instant::now();
    while !target.keys(&keys).await.unwrap().is_empty() {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "key objects remain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let erasures = target
        .keys(&format!("erasures/{}/", acme.tenant_id))
        .await
        .unwrap();
    assert!(!erasures.is_empty(), "the erasure log is in the target");

    let (ok, out) = cli_run(&app, &["backup", "restore", "--tenant", "acme"], &[]).await;
    assert!(!ok && out.contains("destroyed"), "{out}");
    let dir = temp_dir("restored");
    let into = dir.join("instance");
    let (ok, out) = cli_run(
        &app,
        &[
            "backup",
            "restore",
            "--tenant",
            "acme",
            "--into-new-instance",
            into.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let says = if std::env::var("STRONGROOM_TEST_PG_URL").is_ok() {
        "builds a SQLite instance"
    } else {
        "no tenant with slug"
    };
    assert!(!ok && out.contains(says), "{out}");
}

/// A secret the instance snapshot must not show.
const REPLICA_SECRET: &str = "a-replica-secret-the-snapshot-must-not-show";

#[tokio::test]
async fn ctl_bak_4_a_running_server_restores_one_tenant_and_holds_only_it_at_503() {
    let app = spawn_with_backups_and(backup_url(), |_| {}).await;
    let operator = app.ops_token().await;
    let (target, shipper) = shipper(&app);
    ship::start(app.state.store.clone(), &app.state.schedule, shipper);
    let acme = app.admin("acme").await;
    app.work_orders(&acme).await;
    let globex = app.admin("globex").await;
    app.work_orders(&globex).await;
    app.create_order(&acme, json!({"title": "kept"})).await;
    let (ok, out) = cli_run(&app, &["backup", "now", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    let point = shipped(&app, &target, &acme).await;
    let kept = orders(&app, &acme).await;
    app.create_order(&acme, json!({"title": "undone"})).await;
    shipped(&app, &target, &acme).await;

    // While held, the tenant answers 503 with Retry-After, logins too;
    // the other tenant is served.
    let hold = app.state.holds.hold(&acme.tenant_id).unwrap();
    unavailable(&app, &acme).await;
    assert_eq!(
        login_status(&app, "acme", &acme.email).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(orders(&app, &globex).await.len(), 0);
    // A second restore of a held tenant is refused.
    let restore_path = "/api/v1/ops/tenants/acme/restore";
    let res = app
        .post(restore_path, Some(&operator), json!({"to": "latest"}))
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    drop(hold);

    // The operator route: bad input is a clear 4xx that changes nothing.
    for (token, body, status) in [
        (None, json!({"to": "latest"}), StatusCode::UNAUTHORIZED),
        (
            Some(operator.as_str()),
            json!({"to": "whenever"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Some(operator.as_str()),
            json!({"to": "seq:99999999"}),
            StatusCode::CONFLICT,
        ),
        (
            Some(operator.as_str()),
            json!({"too": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let res = app.post(restore_path, token, body.clone()).await;
        assert_eq!(
            res.status(),
            status,
            "{body}: {}",
            res.text().await.unwrap()
        );
    }
    let res = app
        .post(
            "/api/v1/ops/tenants/nobody/restore",
            Some(&operator),
            json!({"to": "latest"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(orders(&app, &acme).await.len(), 2);

    // The restore itself, through the running server.
    let res = app
        .post(
            restore_path,
            Some(&operator),
            json!({"to": format!("seq:{point}")}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["to_seq"], point);
    assert!(body["snapshot_after"].is_string(), "{body}");
    // The old session ended at once (this server forgot it).
    assert_eq!(listing(&app, &acme).await, StatusCode::UNAUTHORIZED);
    let again = log_in(&app, "acme", &acme.email, &acme.tenant_id).await;
    assert_eq!(orders(&app, &again).await, kept);

    // The CLI, beside a server marked as running, points at the route.
    std::fs::write(app.data_dir.join("serving"), b"pid 1\n").unwrap();
    let (ok, out) = cli_run(&app, &["backup", "restore", "--tenant", "acme"], &[]).await;
    assert!(
        !ok && out.contains("/api/v1/ops/tenants/acme/restore"),
        "{out}"
    );
}

#[tokio::test]
async fn ctl_bak_6_a_drill_rebuilds_each_tenant_from_the_target_and_names_what_differs() {
    let app = spawn_with_backups(backup_url()).await;
    let (_, shipper) = shipper(&app);
    ship::start(app.state.store.clone(), &app.state.schedule, shipper);
    let acme = app.admin("acme").await;
    app.work_orders(&acme).await;
    let mut made = Vec::new();
    for i in 0..10 {
        made.push(
            app.create_order(
                &acme,
                json!({"title": format!("o-{i}"), "notes": "sealed", "code": format!("k{i}")}),
            )
            .await,
        );
    }
    attach_photo(&app, &acme).await;
    let (ok, out) = cli_run(&app, &["backup", "now"], &[]).await;
    assert!(ok, "{out}");
    // Changes of every kind after the snapshot: the drill replays them.
    let id = made[0]["id"].as_str().unwrap();
    let res = app
        .patch(
            &format!("/api/v1/collections/work_orders/records/{id}"),
            &acme.access_token,
            json!({"status": "done"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let id = made[1]["id"].as_str().unwrap();
    let res = app
        .delete(
            &format!("/api/v1/collections/work_orders/records/{id}"),
            &acme.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    app.user(&acme, "second@acme.test", "member").await;
    let globex = app.admin("globex").await;
    app.work_orders(&globex).await;
    let (ok, out) = cli_run(&app, &["backup", "now", "--tenant", "globex"], &[]).await;
    assert!(ok, "{out}");

    let (ok, out) = cli_run(&app, &["backup", "drill"], &[]).await;
    assert!(ok, "{out}");
    assert_eq!(out.matches("passed").count(), 2, "{out}");
    let (ok, out) = cli_run(&app, &["backup", "check"], &[]).await;
    assert!(ok && out.contains("2 tenants checked; database: "), "{out}");
    // The posture report shows the drill, with its RTO and RPO.
    let (_, out) = cli_run(&app, &["verify", "--json"], &[]).await;
    let report: Vec<Value> =
        serde_json::from_str(out.lines().rfind(|l| l.starts_with('[')).unwrap()).unwrap();
    let bak6 = report.iter().find(|c| c["id"] == "BAK-6").unwrap();
    assert_eq!(bak6["verdict"], "pass", "{bak6}");
    assert!(bak6["evidence"].as_str().unwrap().contains("RTO"), "{bak6}");
    for id in ["BAK-2", "BAK-4"] {
        let control = report.iter().find(|c| c["id"] == id).unwrap();
        assert_eq!(control["verdict"], "pass", "{control}");
    }

    // A row changed behind the write path's back (as corruption or an
    // intruder would) is what the backup does not have: the drill names
    // its table and fails.
    let mut raw = app.raw().await;
    let id = made[2]["id"].as_str().unwrap();
    let sql = if std::env::var("STRONGROOM_TEST_PG_URL").is_ok() {
        format!(
            "UPDATE records SET updated_at = updated_at + interval '1 second' WHERE id = '{id}'"
        )
    } else {
        format!("UPDATE records SET updated_at = 'tampered' WHERE id = '{id}'")
    };
    sqlx::query(&sql).execute(&mut raw).await.unwrap();
    let (ok, out) = cli_run(&app, &["backup", "drill", "--tenant", "acme"], &[]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAILED") && out.contains("records: 10 rows live, 10 rebuilt"),
        "{out}"
    );
    assert!(!out.contains("o-2"), "no value in the report: {out}");
    // `backup check --drill` names the same difference, and only reports.
    let (ok, out) = cli_run(&app, &["backup", "check", "--drill"], &[]).await;
    assert!(
        !ok && out.contains("acme (rows)") && out.contains("records: 10 rows live"),
        "{out}"
    );
    let (_, out) = cli_run(&app, &["verify", "--json"], &[]).await;
    let report: Vec<Value> =
        serde_json::from_str(out.lines().rfind(|l| l.starts_with('[')).unwrap()).unwrap();
    let bak6 = report.iter().find(|c| c["id"] == "BAK-6").unwrap();
    assert_eq!(bak6["verdict"], "fail", "{bak6}");
}

/// Creates from 8 clients for 4 s on `address`; each acknowledgement with
/// when it came.
fn steady_load(
    client: &reqwest::Client,
    address: &str,
    token: &str,
) -> tokio::task::JoinSet<Vec<(Instant, Value)>> {
    let started = Instant::now();
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (client, address, token) = (client.clone(), address.to_owned(), token.to_owned());
        load.spawn(async move {
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(4) {
                let res = client
                    .post(format!("{address}/api/v1/collections/work_orders/records"))
                    .bearer_auth(&token)
                    .json(&json!({"title": format!("w{worker}-{i}"), "notes": format!("n{worker}-{i}")}))
                    .send()
                    .await;
                i += 1;
                let Ok(res) = res else { break };
                if res.status() == 201 {
                    acknowledged.push((Instant::now(), res.json::<Value>().await.unwrap()));
                }
            }
            acknowledged
        });
    }
    load
}

/// The lost machine's master key, in a new instance's data dir.
fn copy_master_key(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let key = to.join("master.key");
    std::fs::copy(from.join("master.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The backup settings of a server process or CLI run, as variables.
fn backup_env(url: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("STRONGROOM_BACKUP", "true".to_owned()),
        ("STRONGROOM_BACKUP_URL", url.to_owned()),
    ];
    if url.starts_with("s3://") {
        env.push(("STRONGROOM_BACKUP_ACCESS_KEY_ID", "test".to_owned()));
        env.push(("STRONGROOM_BACKUP_SECRET_ACCESS_KEY", "test".to_owned()));
    }
    env
}

fn run_cli(
    dir: &std::path::Path,
    db: &str,
    env: &[(&str, String)],
    args: &[&str],
) -> (bool, String) {
    let out = crate::helpers::cli(dir, db)
        .envs(env.iter().map(|(k, v)| (*k, v.clone())))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A primary server process with backups on, its tenant `acme` with a
/// `work_orders` collection and a first snapshot: the process, its data
/// dir and database, the backup settings and the admin's token.
struct Primary {
    server: crate::helpers::ServerProcess,
    dir: std::path::PathBuf,
    db: String,
    env: Vec<(&'static str, String)>,
    token: String,
}

async fn start_primary(url: &str, label: &str) -> Primary {
    let primary = serving(url, label, Duration::ZERO).await;
    let (ok, out) = run_cli(&primary.dir, &primary.db, &primary.env, &["backup", "now"]);
    assert!(ok, "{out}");
    primary
}

/// [`start_primary`] without the snapshot, its tenant created `after`
/// the server's start.
async fn serving(url: &str, label: &str, after: Duration) -> Primary {
    use crate::helpers::{ServerProcess, fresh_database, http_client};
    let env = backup_env(url);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = temp_dir(label);
    let db = fresh_database(&dir).await;
    let server = ServerProcess::start_with_env(&dir, &db, "warn", &env_refs).await;
    tokio::time::sleep(after).await;
    let (token, _) = crate::durability::tenant_admin_token(&server, &dir, &db).await;
    let res = http_client()
        .post(format!("{}/api/v1/collections", server.address))
        .bearer_auth(&token)
        .json(&json!({"name": "work_orders", "fields": [
            {"name": "title", "type": "text", "required": true},
            {"name": "notes", "type": "text", "sensitive": true}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    Primary {
        server,
        dir,
        db,
        env,
        token,
    }
}

/// A tenant created on a running server is restorable from its first
/// seconds: it gets its first snapshot at once, and the instance snapshot
/// names it, with no `backup now` and no daily run.
#[tokio::test]
async fn ctl_bak_4_a_new_tenant_is_restorable_within_seconds_without_waiting_for_the_daily_snapshot()
 {
    use crate::helpers::{ServerProcess, fresh_database, http_client};
    // The daily job's first run, two seconds after the start, is over
    // before the tenant exists.
    let Primary {
        server,
        dir,
        db: _,
        env,
        token,
    } = serving(
        &backup_url(),
        "first-snapshot",
        strongroom::ops::FIRST_RUN_AFTER + Duration::from_secs(2),
    )
    .await;
    let client = http_client();
    let res = client
        .post(format!(
            "{}/api/v1/collections/work_orders/records",
            server.address
        ))
        .bearer_auth(&token)
        .json(&json!({"title": "the first order"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // The machine is lost some seconds later: the target alone brings the
    // tenant back. Until the first snapshot is there, the restore says so
    // and is tried again on another empty instance.
    let deadline = Instant::now()
        + Duration::from_secs(strongroom::backup::snapshot::FIRST_SNAPSHOT_SECONDS * 2 + 10);
    let (dir2, db2) = loop {
        let dir2 = temp_dir("first-snapshot-restored");
        let db2 = fresh_database(&dir2).await;
        copy_master_key(&dir, &dir2);
        let (ok, out) = run_cli(&dir2, &db2, &env, &["backup", "restore", "--all"]);
        if ok {
            break (dir2, db2);
        }
        assert!(Instant::now() < deadline, "never restorable: {out}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    drop(server);
    let restored = ServerProcess::start(&dir2, &db2, "warn").await;
    let res: Value = client
        .post(format!("{}/api/v1/auth/login", restored.address))
        .json(&json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = res["access_token"].as_str().expect("logged in").to_owned();
    let page: Value = client
        .get(format!(
            "{}/api/v1/collections/work_orders/records",
            restored.address
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let titles: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["title"])
        .collect();
    assert_eq!(titles, vec!["the first order"]);
}

#[tokio::test]
async fn ctl_bak_4_after_kill_9_the_target_alone_restores_every_write_acknowledged_a_second_before()
{
    use crate::helpers::{ServerProcess, fresh_database, http_client};
    let url = backup_url();
    let Primary {
        server,
        dir,
        db: _,
        env,
        token,
    } = start_primary(&url, "kill9-backup").await;
    let client = http_client();

    // A steady load of creates from 8 clients for 4 s; every
    // acknowledgement is kept with when it came.
    let mut load = steady_load(&client, &server.address, &token);
    // The kill lands while the load still runs.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut server = server;
    server.child.kill().unwrap();
    let killed = Instant::now();
    server.child.wait().unwrap();
    let mut acknowledged = Vec::new();
    while let Some(done) = load.join_next().await {
        acknowledged.extend(done.unwrap());
    }
    let due: Vec<&Value> = acknowledged
        .iter()
        .filter(|(at, _)| killed.duration_since(*at) > Duration::from_secs(1))
        .map(|(_, body)| body)
        .collect();
    assert!(due.len() > 20, "a load ran: {} creates", due.len());

    // The machine is gone: an empty data dir and database, the master key
    // and the backup target.
    let dir2 = temp_dir("kill9-restored");
    let db2 = fresh_database(&dir2).await;
    copy_master_key(&dir, &dir2);
    let (ok, out) = run_cli(&dir2, &db2, &env, &["backup", "restore", "--all"]);
    assert!(ok, "{out}");
    let server = ServerProcess::start(&dir2, &db2, "warn").await;
    let res: Value = client
        .post(format!("{}/api/v1/auth/login", server.address))
        .json(&json!({"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = res["access_token"].as_str().unwrap().to_owned();
    let mut restored = std::collections::HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page_url = format!(
            "{}/api/v1/collections/work_orders/records?limit=200",
            server.address
        );
        if let Some(c) = &cursor {
            page_url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(page_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            restored.insert(item["id"].as_str().unwrap().to_owned(), item.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let missing: Vec<&&Value> = due
        .iter()
        .filter(|body| restored.get(body["id"].as_str().unwrap()) != Some(**body))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} writes acknowledged over a second before the kill are not restored as acknowledged: {:?}",
        missing.len(),
        due.len(),
        missing.first()
    );
    println!(
        "{} of {} acknowledged writes restored ({} due, over 1 s before the kill)",
        acknowledged
            .iter()
            .filter(|(_, b)| restored.contains_key(b["id"].as_str().unwrap()))
            .count(),
        acknowledged.len(),
        due.len()
    );
}

#[tokio::test]
async fn ctl_bak_5_a_standby_follows_refuses_writes_and_once_promoted_has_every_write_acknowledged_a_second_before_the_kill()
 {
    use crate::helpers::{ServerProcess, fresh_database, http_client};
    let url = backup_url();
    let Primary {
        server: primary,
        dir,
        db,
        env,
        token,
    } = start_primary(&url, "primary").await;
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let client = http_client();

    // The standby: an instance of its own with the same master key.
    let standby_dir = temp_dir("standby");
    let standby_db = fresh_database(&standby_dir).await;
    copy_master_key(&dir, &standby_dir);
    let mut standby_env = env_refs.clone();
    standby_env.push(("STRONGROOM_BACKUP_PRIMARY_URL", primary.address.as_str()));
    let standby = ServerProcess::start_with_args(
        &standby_dir,
        &standby_db,
        "warn",
        &standby_env,
        &["--follow", &url],
    )
    .await;
    let ready: Value = client
        .get(format!("{}/readyz", standby.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ready["standby_of"].is_string(), "{ready}");

    // Its lag: a write on the primary, until the standby shows it to the
    // same session (sessions are followed too).
    let mut lags = Vec::new();
    for i in 0..5 {
        let res = client
            .post(format!(
                "{}/api/v1/collections/work_orders/records",
                primary.address
            ))
            .bearer_auth(&token)
            .json(&json!({"title": format!("probe-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let written = Instant::now();
        loop {
            let res = client
                .get(format!(
                    "{}/api/v1/collections/work_orders/records/{id}",
                    standby.address
                ))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            if res.status() == 200 {
                lags.push(written.elapsed());
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(15),
                "the standby never showed {id}: {}",
                res.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("standby lag per write: {lags:?}");
    // The primary's posture report knows its standby.
    let (_, out) = run_cli(&dir, &db, &env, &["verify", "--json"]);
    let report: Vec<Value> =
        serde_json::from_str(out.lines().rfind(|l| l.starts_with('[')).unwrap()).unwrap();
    let bak5 = report.iter().find(|c| c["id"] == "BAK-5").unwrap();
    assert_eq!(bak5["verdict"], "pass", "{bak5}");

    // It refuses writes, naming the primary.
    let res = client
        .post(format!(
            "{}/api/v1/collections/work_orders/records",
            standby.address
        ))
        .bearer_auth(&token)
        .json(&json!({"title": "to the standby"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains(&primary.address),
        "{body}"
    );

    // A steady load on the primary, killed in the middle of it.
    let mut load = steady_load(&client, &primary.address, &token);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let mut primary = primary;
    primary.child.kill().unwrap();
    let killed = Instant::now();
    primary.child.wait().unwrap();
    let mut acknowledged = Vec::new();
    while let Some(done) = load.join_next().await {
        acknowledged.extend(done.unwrap());
    }

    // Promoted, it takes writes, and holds every write acknowledged more
    // than a second before the kill, as acknowledged.
    let (ok, out) = run_cli(&standby_dir, &standby_db, &env, &["promote"]);
    assert!(ok, "{out}");
    let res = client
        .post(format!(
            "{}/api/v1/collections/work_orders/records",
            standby.address
        ))
        .bearer_auth(&token)
        .json(&json!({"title": "after the promotion"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let mut missing = 0;
    let mut due = 0;
    for (at, body) in &acknowledged {
        if killed.duration_since(*at) <= Duration::from_secs(1) {
            continue;
        }
        due += 1;
        let id = body["id"].as_str().unwrap();
        let res = client
            .get(format!(
                "{}/api/v1/collections/work_orders/records/{id}",
                standby.address
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if res.status() != 200 || res.json::<Value>().await.unwrap() != *body {
            missing += 1;
        }
    }
    assert!(due > 20, "a load ran: {due}");
    assert_eq!(
        missing, 0,
        "{missing} of {due} writes acknowledged over a second before the kill are not on the promoted standby as acknowledged"
    );
    // The promoted standby ships to the same target: the chain goes on.
    let (ok, out) = run_cli(&standby_dir, &standby_db, &env, &["backup", "verify"]);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn ctl_bak_2_pruning_keeps_every_point_inside_retention_and_the_chain_whole() {
    let app = spawn_with_backups(backup_url()).await;
    let (target, shipper) = shipper(&app);
    ship::start(app.state.store.clone(), &app.state.schedule, shipper);
    let acme = app.admin("acme").await;
    app.work_orders(&acme).await;
    let wave = |n: usize, label: &'static str| {
        let (app, acme) = (&app, &acme);
        async move {
            for i in 0..n {
                app.create_order(acme, json!({"title": format!("{label}-{i}")}))
                    .await;
                // Several shipping passes, so several segments.
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
    };
    wave(10, "first").await;
    let early = shipped(&app, &target, &acme).await;
    let (ok, out) = cli_run(&app, &["backup", "now", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    wave(10, "second").await;
    shipped(&app, &target, &acme).await;
    let (ok, out) = cli_run(&app, &["backup", "now", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    let base = journal_seq(&app, &acme).await;
    wave(5, "third").await;
    shipped(&app, &target, &acme).await;
    let before = orders(&app, &acme).await;

    // Everything taken so far is past retention: the newest snapshot
    // before the cutoff stays, with what follows it; the rest goes.
    let cutoff = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let pruned = strongroom::backup::snapshot::prune(&target, &acme.tenant_id, cutoff)
        .await
        .unwrap();
    assert_eq!(pruned.snapshots, 1, "{pruned:?}");
    assert!(pruned.segments > 0, "{pruned:?}");
    let (ok, out) = cli_run(&app, &["backup", "verify", "--tenant", "acme"], &[]).await;
    assert!(ok, "the chain is whole from its base: {out}");
    let (ok, out) = cli_run(&app, &["backup", "drill", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    // Points before the kept snapshot are gone, clearly.
    let to = format!("seq:{early}");
    let (ok, out) = cli_run(
        &app,
        &["backup", "restore", "--tenant", "acme", "--to", &to],
        &[],
    )
    .await;
    assert!(!ok && out.contains("no snapshot"), "{out}");
    let (ok, out) = cli_run(&app, &["backup", "restore", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains(&format!("snapshot at seq {base}")), "{out}");
    let again = log_in(&app, "acme", &acme.email, &acme.tenant_id).await;
    assert_eq!(orders(&app, &again).await, before);
    // Shipping goes on after the base, and the chain stays whole.
    app.create_order(&again, json!({"title": "after pruning"}))
        .await;
    shipped(&app, &target, &again).await;
    let (ok, out) = cli_run(&app, &["backup", "verify", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");

    // Less than a week of retention is refused.
    let (ok, out) = cli_run(
        &app,
        &["backup", "list"],
        &[("STRONGROOM_BACKUP_RETENTION_DAYS", "3".into())],
    )
    .await;
    assert!(!ok && out.contains("at least 7"), "{out}");
}

#[tokio::test]
async fn ctl_bak_2_snapshots_taken_under_concurrent_writes_are_each_one_consistent_point() {
    let app = spawn_with_backups(backup_url()).await;
    let (target, shipper) = shipper(&app);
    ship::start(app.state.store.clone(), &app.state.schedule, shipper);
    let acme = app.admin("acme").await;
    app.work_orders(&acme).await;
    let scope = app
        .state
        .store
        .tenant_scopes()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id_str() == acme.tenant_id)
        .unwrap();
    // Writers never stop while the snapshots are taken.
    let writing = std::sync::atomic::AtomicBool::new(true);
    let writers = async {
        let mut made = 0;
        while writing.load(std::sync::atomic::Ordering::SeqCst) {
            app.create_order(&acme, json!({"title": format!("w-{made}"), "notes": "n"}))
                .await;
            made += 1;
        }
        made
    };
    let snapshots = async {
        let mut taken = Vec::new();
        for _ in 0..20 {
            taken.push(
                strongroom::backup::snapshot::take(
                    &app.state.store,
                    &app.state.vault,
                    &target,
                    &scope,
                )
                .await
                .unwrap(),
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        writing.store(false, std::sync::atomic::Ordering::SeqCst);
        taken
    };
    let (made, taken) = tokio::join!(writers, snapshots);
    assert!(made > 20, "writes ran: {made}");
    shipped(&app, &target, &acme).await;
    let seqs: std::collections::BTreeSet<i64> = taken.iter().map(|t| t.seq).collect();
    assert!(
        seqs.len() > 5,
        "the snapshots fell between writes: {seqs:?}"
    );

    // Each one is exactly the state at its seq: as many records as the
    // journal created up to it, as many audit events, and a linked trail.
    for snap in &taken {
        let rebuilt = strongroom::backup::restore::rebuild(
            &app.state.vault,
            &target,
            &acme.tenant_id,
            &strongroom::backup::restore::Point::Seq(snap.seq),
            app.state.store.backend(),
            &|_, _| {},
        )
        .await
        .unwrap();
        let journaled = |entity: &str| {
            format!(
                "SELECT COUNT(*) FROM journal WHERE tenant_id = '{}' AND entity = '{entity}' \
                 AND op = 'insert' AND seq <= {}",
                acme.tenant_id, snap.seq
            )
        };
        assert_eq!(
            rebuilt.table_texts("records").len() as i64,
            app.count(&journaled("record")).await,
            "snapshot at seq {}",
            snap.seq
        );
        assert_eq!(
            rebuilt.table_texts("audit_events").len() as i64,
            app.count(&journaled("audit_event")).await,
            "snapshot at seq {}",
            snap.seq
        );
    }
    let (ok, out) = cli_run(&app, &["backup", "drill", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
}

#[tokio::test]
async fn ctl_bak_3_the_instance_snapshot_holds_tenants_and_configuration_sealed() {
    let app = spawn_with_backups_and(backup_url(), |c| {
        c.object_store_replica_secret_access_key =
            Some(secrecy::SecretString::from(REPLICA_SECRET));
    })
    .await;
    let (target, _) = shipper(&app);
    app.admin("acme").await;
    app.admin("globex").await;
    let (ok, out) = cli_run(&app, &["backup", "now"], &[]).await;
    assert!(ok && out.contains("instance:"), "{out}");
    let instance = strongroom::backup::snapshot::newest_instance(&target, &app.state.keyring)
        .await
        .unwrap()
        .expect("an instance snapshot");
    let slugs: Vec<&str> = instance
        .tenants
        .iter()
        .filter_map(|t| t["slug"].as_str())
        .collect();
    assert_eq!(slugs.len(), 2, "{slugs:?}");
    assert!(slugs.contains(&"acme") && slugs.contains(&"globex"));
    assert!(
        instance.config.contains("backup_retention_days"),
        "the configuration is in it"
    );
    assert!(
        !instance.config.contains(REPLICA_SECRET),
        "secrets are redacted"
    );
    // Sealed: neither a slug nor a setting shows in the stored bytes.
    for (key, bytes) in raw_objects(&target).await {
        if key.starts_with("instance/") {
            for needle in [&b"globex"[..], b"backup_retention_days"] {
                assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{key}");
            }
        }
    }
    let (_, out) = cli_run(&app, &["verify", "--json"], &[]).await;
    let report: Vec<Value> =
        serde_json::from_str(out.lines().rfind(|l| l.starts_with('[')).unwrap()).unwrap();
    let bak3 = report.iter().find(|c| c["id"] == "BAK-3").unwrap();
    assert_eq!(bak3["verdict"], "pass", "{bak3}");
}

/// Runs the integrity checks through the operator route.
async fn integrity_check(app: &TestApp, drill: bool) -> Value {
    let operator = app.ops_token().await;
    let res = app
        .post(
            "/api/v1/ops/integrity",
            Some(&operator),
            json!({ "drill": drill }),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    res.json().await.unwrap()
}

/// The findings of a report about one tenant.
fn findings_for(report: &Value, tenant: &str) -> Vec<Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["tenant"] == tenant)
        .cloned()
        .collect()
}

/// The one finding of a report about `tenant`, which must be of `check`.
fn the_finding(report: &Value, tenant: &str, check: &str) -> Value {
    let found = findings_for(report, tenant);
    assert_eq!(found.len(), 1, "{report}");
    assert_eq!(found[0]["check"], check, "{report}");
    found[0].clone()
}

/// Asserts a finding's `field` contains `text`.
fn says(finding: &Value, field: &str, text: &str) {
    assert!(
        finding[field].as_str().unwrap_or_default().contains(text),
        "{field} does not say {text:?}: {finding}"
    );
}

/// Runs `sql` (with `{tenant}` filled in) on the database directly,
/// behind the write path: what a damaged disk or a person with database
/// access does.
async fn behind_the_write_path(app: &TestApp, tenant: &str, statements: &[&str]) {
    let mut conn = app.raw().await;
    for sql in statements {
        let sql = sql.replace("{tenant}", tenant);
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
}

/// A server with backups shipping, operators to mail (the sink) and
/// `backup_auto_restore` as given; a tenant with work orders for each slug.
async fn watched<const N: usize>(
    auto_restore: bool,
    slugs: [&str; N],
) -> (
    crate::helpers::MailSink,
    TestApp,
    std::sync::Arc<strongroom::backup::BackupTarget>,
    [Session; N],
) {
    let sink = crate::helpers::MailSink::start().await;
    let smtp = sink.url();
    let app = spawn_with_backups_and(backup_url(), move |c| {
        c.backup_auto_restore = auto_restore;
        c.operator_email = vec!["ops@strongroom.test".to_owned()];
        c.smtp_url = Some(smtp);
    })
    .await;
    strongroom::cli::start_mail_delivery(&app.state);
    let (target, shipper) = shipper(&app);
    ship::start(app.state.store.clone(), &app.state.schedule, shipper);
    let mut sessions = Vec::new();
    for slug in slugs {
        let admin = app.admin_via(&sink, slug).await;
        app.work_orders(&admin).await;
        sessions.push(admin);
    }
    let sessions: [Session; N] = sessions.try_into().ok().unwrap();
    (sink, app, target, sessions)
}

#[tokio::test]
async fn ctl_bak_4_rows_changed_behind_the_write_path_are_refused_then_restored_automatically() {
    let (sink, app, target, [acme, globex]) = watched(true, ["acme", "globex"]).await;
    let operator = app.ops_token().await;
    app.create_order(
        &acme,
        json!({"title": "replace the pump seal", "notes": "valve 7"}),
    )
    .await;
    app.create_order(&globex, json!({"title": "globex own order"}))
        .await;
    for slug in ["acme", "globex"] {
        let (ok, out) = cli_run(&app, &["backup", "now", "--tenant", slug], &[]).await;
        assert!(ok, "{out}");
    }
    app.create_order(&acme, json!({"title": "after the snapshot"}))
        .await;
    shipped(&app, &target, &acme).await;
    shipped(&app, &target, &globex).await;
    let before = orders(&app, &acme).await;
    let globex_before = orders(&app, &globex).await;

    // A clean instance: the checks find nothing, drills included.
    let report = integrity_check(&app, true).await;
    assert_eq!(report["findings"], json!([]), "{report}");
    assert_eq!(report["tenants_checked"], 2);

    // A title changed in the database, behind the write path.
    let forge = if crate::helpers::is_postgres() {
        "UPDATE records SET data = CAST(replace(CAST(data AS TEXT), 'replace the pump seal', 'forged') AS jsonb) WHERE tenant_id = '{tenant}'"
    } else {
        "UPDATE records SET data = replace(data, 'replace the pump seal', 'forged') WHERE tenant_id = '{tenant}'"
    };
    behind_the_write_path(&app, &acme.tenant_id, &[forge]).await;
    let forged = orders(&app, &acme).await;
    assert!(forged.iter().any(|o| o["title"] == "forged"), "{forged:?}");

    // The hourly checks do not compare rows; the drill does, and the
    // tenant is refused, then restored from its backup.
    let report = integrity_check(&app, false).await;
    assert_eq!(report["findings"], json!([]), "{report}");
    let report = integrity_check(&app, true).await;
    let found = the_finding(&report, &acme.tenant_id, "rows");
    assert_eq!(found["slug"], "acme");
    says(&found, "detail", "records");
    says(&found, "outcome", "restored to seq");
    assert!(findings_for(&report, &globex.tenant_id).is_empty());
    // The value is never in the report.
    assert!(!report.to_string().contains("forged"), "{report}");

    // Served again, as it was before the forgery; its sessions ended.
    assert_eq!(listing(&app, &acme).await, StatusCode::UNAUTHORIZED);
    let again = log_in(&app, "acme", &acme.email, &acme.tenant_id).await;
    assert_eq!(orders(&app, &again).await, before);
    assert_eq!(orders(&app, &globex).await, globex_before);
    let res = app.get("/api/v1/ops/integrity", &operator).await;
    let refused: Value = res.json().await.unwrap();
    assert_eq!(refused["refused"], json!([]));
    // The restore is an event of the tenant's trail.
    let admin_events = app.audit(&again).await;
    assert!(
        admin_events
            .iter()
            .any(|e| e["action"] == "backup.restored"),
        "{admin_events:?}"
    );

    // The operators were told: what failed, then what was done.
    let failed = sink
        .nth_about(
            "ops@strongroom.test",
            "Strongroom: integrity check failed for tenant acme",
            1,
        )
        .await;
    assert!(failed.text.unwrap_or_default().contains("rows"));
    let restored = sink
        .nth_about("ops@strongroom.test", "Strongroom: tenant acme restored", 1)
        .await;
    assert!(
        restored
            .text
            .unwrap_or_default()
            .contains("restored from its backup")
    );
    // The next check finds the tenant whole.
    let report = integrity_check(&app, true).await;
    assert_eq!(report["findings"], json!([]), "{report}");
}

/// Checks racing on one node (the node that finds damage answers it):
/// several operators, or an operator and the hourly job, at once.
#[tokio::test]
async fn ctl_bak_4_racing_integrity_checks_restore_a_damaged_tenant_once_and_leave_it_served() {
    const RACERS: usize = 6;
    let (sink, app, target, [acme, globex]) = watched(true, ["acme", "globex"]).await;
    let operator = app.ops_token().await;
    app.create_order(&acme, json!({"title": "replace the pump seal"}))
        .await;
    app.create_order(&globex, json!({"title": "globex own order"}))
        .await;
    let (ok, out) = cli_run(&app, &["backup", "now", "--tenant", "acme"], &[]).await;
    assert!(ok, "{out}");
    shipped(&app, &target, &acme).await;
    let before = orders(&app, &acme).await;
    let forge = if crate::helpers::is_postgres() {
        "UPDATE records SET data = CAST(replace(CAST(data AS TEXT), 'replace the pump seal', 'forged') AS jsonb) WHERE tenant_id = '{tenant}'"
    } else {
        "UPDATE records SET data = replace(data, 'replace the pump seal', 'forged') WHERE tenant_id = '{tenant}'"
    };
    behind_the_write_path(&app, &acme.tenant_id, &[forge]).await;

    // The checks race each other and another tenant's writes.
    let checks = (0..RACERS).map(|_| integrity_check(&app, true));
    let writes = (0..RACERS).map(|i| {
        app.post(
            "/api/v1/collections/work_orders/records",
            Some(&globex.access_token),
            json!({ "title": format!("written meanwhile {i}") }),
        )
    });
    let (reports, written) = tokio::join!(
        futures_util::future::join_all(checks),
        futures_util::future::join_all(writes)
    );
    for res in written {
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    // One check found the damage and restored it; the others, run after
    // it, found the tenant whole.
    let outcomes: Vec<String> = reports
        .iter()
        .flat_map(|r| findings_for(r, &acme.tenant_id))
        .map(|f| f["outcome"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(outcomes.len(), 1, "{reports:?}");
    assert!(outcomes[0].starts_with("restored to seq"), "{outcomes:?}");
    for report in &reports {
        assert!(
            findings_for(report, &globex.tenant_id).is_empty(),
            "{report}"
        );
    }

    // Served, whole, and refused by nobody.
    let res = app.get("/api/v1/ops/integrity", &operator).await;
    let refused: Value = res.json().await.unwrap();
    assert_eq!(refused["refused"], json!([]));
    let again = log_in(&app, "acme", &acme.email, &acme.tenant_id).await;
    assert_eq!(orders(&app, &again).await, before);
    assert_eq!(orders(&app, &globex).await.len(), 1 + RACERS);

    // The operators were told once of each.
    sink.nth_about("ops@strongroom.test", "Strongroom: tenant acme restored", 1)
        .await;
    let told = |subject: &str| {
        sink.to("ops@strongroom.test")
            .iter()
            .filter(|m| m.subject.starts_with(subject))
            .count()
    };
    assert_eq!(
        told("Strongroom: integrity check failed for tenant acme"),
        1
    );
    assert_eq!(told("Strongroom: tenant acme restored"), 1);
}

#[tokio::test]
async fn ctl_bak_4_a_journal_hole_or_lost_writes_refuse_only_that_tenant_until_an_operator_acts() {
    let (sink, app, target, [acme, globex, initech]) =
        watched(false, ["acme", "globex", "initech"]).await;
    let operator = app.ops_token().await;
    for session in [&acme, &globex, &initech] {
        app.create_order(session, json!({"title": "an order"}))
            .await;
    }
    let rolled_back_to = shipped(&app, &target, &initech).await;
    app.create_order(&initech, json!({"title": "lost"})).await;
    app.create_order(&initech, json!({"title": "lost too"}))
        .await;
    shipped(&app, &target, &initech).await;
    shipped(&app, &target, &acme).await;

    // acme loses one journal entry; initech's database goes back in time
    // (its newest changes and their journal entries gone, the counter
    // rewound), as an old copy of the database would.
    behind_the_write_path(
        &app,
        &acme.tenant_id,
        &["DELETE FROM journal WHERE tenant_id = '{tenant}' AND seq = 3"],
    )
    .await;
    let rewind = format!(
        "UPDATE tenant_sequences SET journal_seq = {rolled_back_to} WHERE tenant_id = '{{tenant}}'"
    );
    let cut =
        format!("DELETE FROM journal WHERE tenant_id = '{{tenant}}' AND seq > {rolled_back_to}");
    behind_the_write_path(&app, &initech.tenant_id, &[&cut, &rewind]).await;

    let report = integrity_check(&app, false).await;
    let hole = the_finding(&report, &acme.tenant_id, "journal");
    says(&hole, "detail", "misses 1 of the seqs");
    let lost = the_finding(&report, &initech.tenant_id, "lost_writes");
    says(&lost, "remedy", "--all --into-new-instance");
    assert_eq!(lost["outcome"], "refused");
    assert!(findings_for(&report, &globex.tenant_id).is_empty());

    // The refused tenants answer 503 (logins too); the other is served.
    for session in [&acme, &initech] {
        let problem = unavailable(&app, session).await;
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("tenant-integrity"),
            "{problem}"
        );
    }
    assert_eq!(
        login_status(&app, "acme", &acme.email).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(orders(&app, &globex).await.len(), 1);
    app.create_order(&globex, json!({"title": "still writing"}))
        .await;

    // The operator sees them, and was mailed about each.
    let res = app.get("/api/v1/ops/integrity", &operator).await;
    let listed: Value = res.json().await.unwrap();
    assert_eq!(listed["refused"].as_array().unwrap().len(), 2, "{listed}");
    for slug in ["acme", "initech"] {
        sink.nth_about(
            "ops@strongroom.test",
            &format!("Strongroom: integrity check failed for tenant {slug}"),
            1,
        )
        .await;
    }
    // Checking again neither mails again nor lifts the refusal.
    integrity_check(&app, false).await;
    assert_eq!(
        sink.to("ops@strongroom.test").len(),
        2,
        "{:?}",
        sink.to("ops@strongroom.test")
    );

    // Lifting: without a token, an unknown tenant, a tenant not refused.
    let res = app
        .request(
            reqwest::Method::DELETE,
            "/api/v1/ops/tenants/acme/refusal",
            None,
            None,
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .delete("/api/v1/ops/tenants/nobody/refusal", &operator)
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app
        .delete("/api/v1/ops/tenants/globex/refusal", &operator)
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app
        .delete("/api/v1/ops/tenants/acme/refusal", &operator)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(orders(&app, &acme).await.len(), 1);
    assert_eq!(
        listing(&app, &initech).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn ctl_bak_4_a_damaged_database_file_is_found_by_quick_check_and_its_tenants_refused() {
    if crate::helpers::is_postgres() {
        // PostgreSQL checks its own pages; the file check is SQLite's.
        return;
    }
    let mut app = crate::helpers::spawn_app().await;
    let acme = app.admin("acme").await;
    app.work_orders(&acme).await;
    app.create_order(&acme, json!({"title": "an order"})).await;
    let globex = app.admin("globex").await;
    let report = integrity_check(&app, false).await;
    assert_eq!(report["database"], "ok", "{report}");
    app.stop_server().await;

    // The records table's first page overwritten on disk, as a failing
    // disk would.
    let (page_size, root) = {
        let mut conn = app.raw().await;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await
            .unwrap();
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let root: i64 =
            sqlx::query_scalar("SELECT rootpage FROM sqlite_schema WHERE name = 'records'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        (page_size, root)
    };
    let file = app.data_dir.join("strongroom.db");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = ((root - 1) * page_size) as usize;
    bytes[at..at + 64].fill(0xEE);
    std::fs::write(&file, bytes).unwrap();

    let node = app.second_node().await;
    let report = integrity_check(&node, false).await;
    assert_ne!(report["database"], "ok", "{report}");
    let found = the_finding(&report, &acme.tenant_id, "unreadable");
    says(&found, "remedy", "/api/v1/ops/tenants/acme/restore");
    // globex has no record, so none of its rows is on the damaged page.
    assert!(
        findings_for(&report, &globex.tenant_id).is_empty(),
        "{report}"
    );
    let res = node
        .get(
            "/api/v1/collections/work_orders/records",
            &acme.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = node.get("/api/v1/me", &globex.access_token).await;
    assert_eq!(res.status(), StatusCode::OK);
}
