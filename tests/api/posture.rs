//! The control catalog (POS-1): the README's control table is the
//! catalog's, every control of CONTROLS.md is in it, and every test it
//! names exists.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn ctl_pos_1_the_readme_control_table_is_the_catalogs_and_every_named_test_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args(["controls", "--markdown"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let begin = readme
        .find("<!-- controls:begin")
        .expect("the README marks its table");
    let begin = begin + readme[begin..].find('\n').unwrap() + 1;
    let end = readme
        .find("<!-- controls:end -->")
        .expect("the README marks its table");
    assert_eq!(
        &readme[begin..end],
        generated,
        "the README's control table differs from the catalog: run `strongroom controls --markdown`"
    );

    let controls: Vec<serde_json::Value> = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"))
            .args(["controls", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(controls.len(), 58, "every control of CONTROLS.md, by id");
    let mut files = Vec::new();
    sources(&root.join("tests"), &mut files);
    sources(&root.join("src"), &mut files);
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for control in &controls {
        for test in control["tests"].as_array().unwrap() {
            let name = test.as_str().unwrap();
            assert!(
                text.contains(&format!("fn {name}(")),
                "{} names the test {name}, which does not exist",
                control["id"]
            );
        }
        if control["status"] == "enforced" {
            assert!(
                control["tests"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t.as_str().unwrap().starts_with("ctl_")),
                "{} is enforced without a ctl_ test",
                control["id"]
            );
        }
    }
}

/// `strongroom verify --json` on the app's stores: the exit code and each
/// control's verdict.
async fn verify(
    app: &crate::helpers::TestApp,
) -> (i32, std::collections::HashMap<String, serde_json::Value>) {
    use crate::helpers::RunOff;
    let out = app
        .cli()
        .await
        .args(["verify", "--json"])
        .run()
        .await
        .unwrap();
    let report: Vec<serde_json::Value> = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|line| !line.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(report.len(), 58);
    let by_id = report
        .into_iter()
        .map(|c| (c["id"].as_str().unwrap().to_owned(), c))
        .collect();
    (out.status.code().unwrap_or(-1), by_id)
}

#[tokio::test]
async fn ctl_pos_1_verify_turns_a_tampered_control_to_fail_and_exits_non_zero() {
    let app = crate::helpers::spawn_app().await;
    let admin = app.admin("acme").await;
    app.work_orders(&admin).await;
    app.create_order(
        &admin,
        serde_json::json!({"title": "pump", "notes": "sealed"}),
    )
    .await;
    let (code, report) = verify(&app).await;
    assert_eq!(code, 0, "{report:?}");
    assert_eq!(report["AUD-1"]["verdict"], "pass", "{}", report["AUD-1"]);
    assert_eq!(report["ENC-3"]["verdict"], "pass", "{}", report["ENC-3"]);
    assert_eq!(report["AUD-7"]["verdict"], "pass", "{}", report["AUD-7"]);
    assert!(
        report["AUD-7"]["evidence"]
            .as_str()
            .unwrap()
            .contains("1 tenants' chains verified now")
    );
    // Controls without a check say so; none is hidden.
    assert_eq!(report["IAM-2"]["status"], "not_built");
    assert!(report["IAM-2"]["verdict"].is_null());
    let mut raw = app.raw().await;
    if crate::helpers::is_postgres() {
        assert_eq!(report["TEN-2"]["verdict"], "pass", "{}", report["TEN-2"]);
        // Row-level security switched off on one table, behind the app's back.
        sqlx::query("ALTER TABLE records NO FORCE ROW LEVEL SECURITY")
            .execute(&mut raw)
            .await
            .unwrap();
        let (code, report) = verify(&app).await;
        assert_eq!(code, 1);
        assert_eq!(report["TEN-2"]["verdict"], "fail");
        assert!(
            report["TEN-2"]["evidence"]
                .as_str()
                .unwrap()
                .contains("records (RLS not forced)"),
            "{}",
            report["TEN-2"]
        );
        sqlx::query("ALTER TABLE records FORCE ROW LEVEL SECURITY")
            .execute(&mut raw)
            .await
            .unwrap();
    } else {
        assert_eq!(report["TEN-2"]["verdict"], "warn");
    }
    // The tenant's active key retired behind the app's back, sealed data left.
    sqlx::query("UPDATE tenant_keys SET state = 'retired' WHERE state = 'active'")
        .execute(&mut raw)
        .await
        .unwrap();
    let (code, report) = verify(&app).await;
    assert_eq!(code, 1);
    assert_eq!(report["ENC-3"]["verdict"], "fail", "{}", report["ENC-3"]);
    sqlx::query("UPDATE tenant_keys SET state = 'active' WHERE state = 'retired'")
        .execute(&mut raw)
        .await
        .unwrap();
    // An audit event edited in the database.
    sqlx::query("UPDATE audit_events SET action = 'record.read' WHERE seq = 2")
        .execute(&mut raw)
        .await
        .unwrap();
    let (code, report) = verify(&app).await;
    assert_eq!(code, 1, "a tampered trail exits non-zero");
    assert_eq!(report["AUD-7"]["verdict"], "fail");
    assert!(
        report["AUD-7"]["evidence"]
            .as_str()
            .unwrap()
            .contains("fails at seq 2"),
        "{}",
        report["AUD-7"]
    );
}

/// The public key an instance publishes for its posture reports.
async fn published_key(app: &crate::helpers::TestApp) -> String {
    let published: serde_json::Value = app
        .client
        .get(format!("{}/api/v1/posture/key", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(published["algorithm"], "Ed25519");
    published["public_key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn ctl_pos_1_a_saved_signed_report_verifies_and_an_edited_one_does_not() {
    use crate::helpers::RunOff;
    let app = crate::helpers::spawn_app().await;
    let _admin = app.admin("acme").await;
    let out = app
        .cli()
        .await
        .args(["verify", "--signed"])
        .run()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = crate::helpers::temp_dir("posture");
    let saved = dir.join("report.json");
    std::fs::write(&saved, &out.stdout).unwrap();
    let document: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(document["report"]["controls"].as_array().unwrap().len(), 58);
    // The key the instance publishes is the one that signed it.
    let key = published_key(&app).await;
    assert_eq!(document["public_key"], key.as_str());
    let check = |file: &std::path::Path, key: Option<&str>| {
        let mut cmd = crate::helpers::cli(&app.data_dir, &app.database_url);
        cmd.args(["posture", "check"]).arg(file);
        if let Some(key) = key {
            cmd.args(["--key", key]);
        }
        cmd.output().unwrap()
    };
    let ok = check(&saved, Some(&key));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("signature valid"));
    // Offline, against the instance's own key.
    assert!(check(&saved, None).status.success());
    // One verdict changed: refused.
    let text = String::from_utf8(out.stdout).unwrap();
    let edited = dir.join("edited.json");
    std::fs::write(&edited, text.replacen("\"pass\"", "\"fail\"", 1)).unwrap();
    let refused = check(&edited, Some(&key));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("changed after it was signed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Another instance's key does not vouch for it.
    let other = published_key(&crate::helpers::spawn_app().await).await;
    let foreign = check(&saved, Some(&other));
    assert!(!foreign.status.success());
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("another key"));
}
