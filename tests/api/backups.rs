//! BAK-1 and ENC-4 for backups: the journal shipped to a real backup target
//! (a local directory; on the PostgreSQL run, the S3-compatible server),
//! sealed, chained, read back and checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use strongroom::backup::ship::{self, Shipper};
use strongroom::backup::{BackupTarget, segment};
use strongroom::tenancy::TenantScope;

use crate::helpers::{Session, TestApp, spawn_app_with, temp_dir};

/// A backup target of the test's own: beside the data dir, or a fresh
/// prefix of the test bucket when the files are in S3.
pub(crate) fn backup_url() -> String {
    match std::env::var("STRONGROOM_TEST_S3_ENDPOINT") {
        Ok(endpoint) => format!(
            "s3://strongroom-test/backups-{}?endpoint={endpoint}&region=us-east-1",
            uuid::Uuid::new_v4().simple()
        ),
        Err(_) => format!("file://{}", temp_dir("backups").display()),
    }
}

pub(crate) async fn spawn_with_backups(url: String) -> TestApp {
    spawn_with_backups_and(url, |_| {}).await
}

/// [`spawn_with_backups`] with more of the configuration changed.
pub(crate) async fn spawn_with_backups_and(
    url: String,
    more: impl FnOnce(&mut strongroom::config::Config),
) -> TestApp {
    let s3 = url.starts_with("s3://");
    spawn_app_with(move |c| {
        c.backup = true;
        c.backup_url = Some(url);
        if s3 {
            c.backup_access_key_id = Some("test".to_owned());
            c.backup_secret_access_key = Some(secrecy::SecretString::from("test"));
        }
        more(c);
    })
    .await
}

pub(crate) fn shipper(app: &TestApp) -> (Arc<BackupTarget>, Arc<Shipper>) {
    let target = Arc::new(BackupTarget::open(&app.state.config).unwrap());
    let shipper = Shipper::new(
        app.state.store.clone(),
        app.state.vault.clone(),
        app.state.objects.clone(),
        target.clone(),
        Duration::from_secs(60),
    );
    (target, shipper)
}

async fn scope(app: &TestApp, session: &Session) -> TenantScope {
    let scopes = app.state.store.tenant_scopes().await.unwrap();
    scopes
        .into_iter()
        .find(|s| s.id_str() == session.tenant_id)
        .unwrap()
}

async fn audit_seq(app: &TestApp, session: &Session) -> i64 {
    app.count(&format!(
        "SELECT audit_seq FROM tenant_sequences WHERE tenant_id = '{}'",
        session.tenant_id
    ))
    .await
}

pub(crate) async fn journal_seq(app: &TestApp, session: &Session) -> i64 {
    app.count(&format!(
        "SELECT journal_seq FROM tenant_sequences WHERE tenant_id = '{}'",
        session.tenant_id
    ))
    .await
}

/// Every object in the target, raw.
pub(crate) async fn raw_objects(target: &BackupTarget) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for key in target.keys("").await.unwrap() {
        let bytes = target.get(&key).await.unwrap().unwrap();
        out.push((key, bytes.to_vec()));
    }
    out
}

#[tokio::test]
async fn ctl_bak_1_committed_writes_reach_the_backup_target_sealed_and_whole() {
    let app = spawn_with_backups(backup_url()).await;
    let (target, shipper) = shipper(&app);
    target.self_test().await.unwrap();
    ship::start(
        app.state.store.clone(),
        &app.state.schedule,
        shipper.clone(),
    );
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let marker = format!("plaintext-{}", uuid::Uuid::new_v4().simple());
    for i in 0..20 {
        app.create_order(
            &admin,
            json!({"title": format!("{marker}-{i}"), "notes": format!("{marker}-sealed")}),
        )
        .await;
    }
    app.user(&admin, "kowalska@acme.test", "member").await;
    let wanted = journal_seq(&app, &admin).await;
    assert!(wanted > 20, "the writes are journaled");

    // The background job ships it (its pass runs every half second).
    let waited = Instant::now();
    let listing = loop {
        let listing = ship::list(&target, &admin.tenant_id).await.unwrap();
        if listing.last >= Some(wanted) || waited.elapsed() > Duration::from_secs(20) {
            break listing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listing.last, Some(wanted), "shipped: {listing:?}");
    assert_eq!(listing.head.as_ref().map(|h| h.last), Some(wanted));
    let sizes: u64 = raw_objects(&target)
        .await
        .iter()
        .filter(|(k, _)| k.ends_with(".seg"))
        .map(|(_, bytes)| bytes.len() as u64)
        .sum();
    assert_eq!(listing.bytes, sizes, "{listing:?}");
    println!(
        "journal seq {wanted} in the target {} ms after the last write",
        waited.elapsed().as_millis()
    );

    // Nothing of the tenant's data is readable in the target.
    let objects = raw_objects(&target).await;
    assert!(objects.iter().any(|(k, _)| k.ends_with(".seg")));
    for (key, bytes) in &objects {
        for needle in [marker.as_bytes(), b"kowalska@acme.test", b"acme Ltd"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{key} shows {}",
                String::from_utf8_lossy(needle)
            );
        }
    }

    // It reads back whole: every segment opens with the tenant's keys and
    // the chain holds every entry once, in order.
    let report = ship::verify(
        &app.state.store,
        &app.state.vault,
        &target,
        &scope(&app, &admin).await,
    )
    .await
    .unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!((report.entries, report.last), (wanted, wanted));
    let out = app.cli_ok(&["backup", "verify", "--tenant", "acme"]).await;
    assert!(out.contains("ok"), "{out}");

    // The posture report checks the same, live.
    let out = app.cli_ok(&["verify", "--json"]).await;
    let report: Vec<serde_json::Value> =
        serde_json::from_str(out.lines().rfind(|l| !l.is_empty()).unwrap()).unwrap();
    let control = |id: &str| report.iter().find(|c| c["id"] == id).unwrap().clone();
    let (bak1, enc4) = (control("BAK-1"), control("ENC-4"));
    assert_eq!(bak1["verdict"], "pass", "{bak1}");
    assert!(
        bak1["evidence"]
            .as_str()
            .unwrap()
            .contains("shipped to the backup target"),
        "{bak1}"
    );
    assert_eq!(enc4["verdict"], "pass", "{enc4}");
    assert!(
        enc4["evidence"].as_str().unwrap().contains("backup target"),
        "{enc4}"
    );
}

/// Three segments, shipped by passes of the test's own.
async fn three_segments(app: &TestApp, shipper: &Shipper) -> (Session, Vec<String>) {
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    for round in 0..3 {
        for i in 0..3 {
            app.create_order(&admin, json!({"title": format!("r{round}-{i}")}))
                .await;
        }
        let pass = shipper.pass().await.unwrap();
        assert!(pass.failures.is_empty(), "{pass:?}");
    }
    let keys = shipper
        .target()
        .keys(&segment::journal_prefix(&admin.tenant_id))
        .await
        .unwrap();
    assert!(keys.len() >= 3, "{keys:?}");
    (admin, keys)
}

#[tokio::test]
async fn ctl_bak_1_a_tampered_missing_reordered_or_cut_segment_is_named() {
    let app = spawn_with_backups(backup_url()).await;
    let (target, shipper) = shipper(&app);
    let (admin, keys) = three_segments(&app, &shipper).await;
    let n = keys.len();
    let (middle, last) = (keys[n - 2].clone(), keys[n - 1].clone());
    let tenant = scope(&app, &admin).await;
    let verify = || async {
        ship::verify(&app.state.store, &app.state.vault, &target, &tenant)
            .await
            .unwrap()
            .problems
    };
    assert!(verify().await.is_empty());
    let original = target.get(&middle).await.unwrap().unwrap().to_vec();

    // One changed byte: the segment does not open.
    let mut changed = original.clone();
    let at = changed.len() - 5;
    changed[at] ^= 0x40;
    target.put(&middle, changed).await.unwrap();
    let problems = verify().await;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&middle) && p.contains("does not open")),
        "{problems:?}"
    );
    // And the CLI says so, exiting non-zero.
    let said = app
        .cli_fails(&["backup", "verify", "--tenant", "acme"])
        .await;
    assert!(said.contains(&middle), "{said}");

    // Missing: the next one names the gap and the broken chain.
    target.delete(&middle).await.unwrap();
    let problems = verify().await;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&last) && p.contains("missing before it")),
        "{problems:?}"
    );

    // Reordered: the last segment's bytes under the middle one's name.
    let last_bytes = target.get(&last).await.unwrap().unwrap().to_vec();
    target.put(&middle, last_bytes.clone()).await.unwrap();
    let problems = verify().await;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&middle) && p.contains("name and its header disagree")),
        "{problems:?}"
    );

    // Put back, then cut off the newest: the head names what is gone.
    target.put(&middle, original).await.unwrap();
    assert!(verify().await.is_empty());
    target.delete(&last).await.unwrap();
    let problems = verify().await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("head.json") && p.contains("cut off")),
        "{problems:?}"
    );
    // Put back, the copy is whole again.
    target.put(&last, last_bytes).await.unwrap();
    assert!(verify().await.is_empty());
}

#[tokio::test]
async fn ctl_bak_1_a_failing_target_delays_backups_never_writes_and_catches_up() {
    // A local target whose tenant directory cannot be made: a file holds
    // its place.
    let dir = temp_dir("backups");
    std::fs::write(dir.join("t"), b"in the way").unwrap();
    let app = spawn_with_backups(format!("file://{}", dir.display())).await;
    let (_, shipper) = shipper(&app);
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    let started = Instant::now();
    for i in 0..5 {
        app.create_order(&admin, json!({"title": format!("w{i}")}))
            .await;
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pass = shipper.pass().await.unwrap();
    assert!(!pass.failures.is_empty(), "{pass:?}");
    assert!(pass.lag_seconds >= 1.0, "the lag grows: {pass:?}");
    let metrics = strongroom::metrics::get().encode();
    assert!(
        metrics.contains("strongroom_backup_lag_seconds"),
        "{metrics}"
    );

    // The target is back: the next pass ships everything, and the lag is 0.
    std::fs::remove_file(dir.join("t")).unwrap();
    let pass = shipper.pass().await.unwrap();
    assert!(pass.failures.is_empty(), "{pass:?}");
    assert_eq!(pass.lag_seconds, 0.0);
    let listing = ship::list(shipper.target(), &admin.tenant_id)
        .await
        .unwrap();
    assert_eq!(listing.last, Some(journal_seq(&app, &admin).await));
}

#[tokio::test]
async fn ctl_enc_4_a_backup_target_that_cannot_keep_the_canary_stops_the_start() {
    let dir = temp_dir("backups");
    std::fs::write(dir.join("selftest"), b"in the way").unwrap();
    let app = spawn_with_backups(format!("file://{}", dir.display())).await;
    let target = BackupTarget::open(&app.state.config).unwrap();
    let refused = target.self_test().await.unwrap_err();
    assert!(refused.contains("refusing to start"), "{refused}");
    // A target inside the data dir is refused outright.
    let mut config = app.state.config.as_ref().clone();
    config.backup_url = Some(format!("file://{}/backups", app.data_dir.display()));
    let refused = BackupTarget::open(&config).err().unwrap();
    assert!(refused.contains("data dir"), "{refused}");
}

/// Signs checkpoints of every tenant now, keeping them in the target too.
async fn checkpoint(app: &TestApp, target: &BackupTarget) -> Result<usize, String> {
    strongroom::audit::checkpoint_all(
        &app.state.store,
        app.state.keyring.checkpoint_signing_key(),
        Some(target),
    )
    .await
    .map_err(|e| e.to_string())
}

async fn tamper(app: &TestApp, statements: &[String]) {
    let mut conn = app.raw().await;
    for sql in statements {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
}

#[tokio::test]
async fn ctl_aud_7_a_trail_cut_back_with_its_checkpoints_falls_short_of_the_shipped_one() {
    let app = spawn_with_backups(backup_url()).await;
    let (target, _) = shipper(&app);
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    for i in 0..3 {
        app.create_order(&admin, json!({"title": format!("a{i}")}))
            .await;
    }
    assert_eq!(checkpoint(&app, &target).await, Ok(1));
    let kept = audit_seq(&app, &admin).await;
    for i in 0..3 {
        app.create_order(&admin, json!({"title": format!("b{i}")}))
            .await;
    }
    assert_eq!(checkpoint(&app, &target).await, Ok(1));

    // Someone with the database: the newest events and their checkpoint
    // deleted, the head set back to the last event kept.
    let t = &admin.tenant_id;
    tamper(
        &app,
        &[
            format!("DELETE FROM audit_events WHERE tenant_id = '{t}' AND seq > {kept}"),
            format!("DELETE FROM audit_checkpoints WHERE tenant_id = '{t}' AND seq > {kept}"),
            format!(
                "UPDATE tenant_sequences SET audit_seq = {kept}, audit_head = \
                 (SELECT hash FROM audit_events WHERE tenant_id = '{t}' AND seq = {kept}) \
                 WHERE tenant_id = '{t}'"
            ),
        ],
    )
    .await;
    let scope = scope(&app, &admin).await;
    let key = app.state.keyring.checkpoint_signing_key().verifying_key();
    // The database alone is consistent again: that is the hole.
    let alone = strongroom::audit::verify(&app.state.store, &scope, &key)
        .await
        .unwrap();
    assert!(alone.ok, "{alone:?}");
    // The checkpoint in the backup target is not in the database's reach.
    let report =
        strongroom::audit::verify_with_target(&app.state.store, &scope, &key, Some(&target))
            .await
            .unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_seq, Some(kept + 1), "{report:?}");
    assert!(
        report
            .problem
            .as_deref()
            .unwrap()
            .contains("events were deleted"),
        "{report:?}"
    );
    let said = app
        .cli_fails(&["audit", "verify", "--tenant", "acme"])
        .await;
    assert!(
        said.contains(&format!("TAMPERED at seq {}", kept + 1)),
        "{said}"
    );
}

#[tokio::test]
async fn ctl_aud_7_no_checkpoint_is_signed_over_events_that_do_not_chain() {
    let app = spawn_with_backups(backup_url()).await;
    let (target, _) = shipper(&app);
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    assert_eq!(checkpoint(&app, &target).await, Ok(1));
    let kept = audit_seq(&app, &admin).await;
    for i in 0..2 {
        app.create_order(&admin, json!({"title": format!("c{i}")}))
            .await;
    }
    let t = &admin.tenant_id;
    tamper(
        &app,
        &[format!(
            "UPDATE audit_events SET action = 'record.viewed' WHERE tenant_id = '{t}' AND seq = {}",
            kept + 1
        )],
    )
    .await;
    let refused = checkpoint(&app, &target).await.unwrap_err();
    assert!(
        refused.contains(&format!("event {} was modified", kept + 1)),
        "{refused}"
    );
    let signed = app
        .count(&format!(
            "SELECT COUNT(*) FROM audit_checkpoints WHERE tenant_id = '{t}'"
        ))
        .await;
    assert_eq!(signed, 1, "nothing signed over the change");
    let shipped = target.keys(&format!("t/{t}/checkpoints/")).await.unwrap();
    assert_eq!(shipped.len(), 1, "{shipped:?}");
}
