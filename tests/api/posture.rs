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
            .contains("the chain of the one tenant verified now"),
        "{}",
        report["AUD-7"]
    );
    assert_eq!(report["ENC-2"]["verdict"], "pass", "{}", report["ENC-2"]);
    assert!(
        report["ENC-2"]["evidence"]
            .as_str()
            .unwrap()
            .contains("1 values of encrypted fields in 1 records"),
        "{}",
        report["ENC-2"]
    );
    // Every control the README calls done, and has a check that can pass
    // on a bare test instance, passes.
    for id in [
        "TEN-1", "TEN-3", "IAM-1", "AUD-1", "AUD-2", "AUD-4", "AUD-6", "AUD-7", "ENC-3", "FIL-1",
        "FIL-2", "FIL-3", "NET-2", "NET-3", "NET-5",
    ] {
        assert_eq!(report[id]["verdict"], "pass", "{id}: {}", report[id]);
    }
    // Controls without a check say so; none is hidden.
    assert_eq!(report["IAM-4"]["status"], "not_built");
    assert!(report["IAM-4"]["verdict"].is_null());
    // Without a relay, resets are off and invitation tokens are shown.
    assert_eq!(report["IAM-2"]["verdict"], "warn", "{}", report["IAM-2"]);
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
    // A clear value written into a sealed field, behind the app's back.
    sqlx::query(
        "UPDATE records SET data = '{\"title\": \"pump\", \"notes\": \"written in clear\"}'",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    let (code, report) = verify(&app).await;
    assert_eq!(code, 1, "a clear value in a sealed field exits non-zero");
    assert_eq!(report["ENC-2"]["verdict"], "fail", "{}", report["ENC-2"]);
    assert!(
        report["ENC-2"]["evidence"]
            .as_str()
            .unwrap()
            .contains("work_orders.notes of record"),
        "{}",
        report["ENC-2"]
    );
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

/// `strongroom posture check FILE [--key KEY]` on the app's data dir.
fn posture_check(
    app: &crate::helpers::TestApp,
    file: &std::path::Path,
    key: Option<&str>,
) -> std::process::Output {
    let mut cmd = crate::helpers::cli(&app.data_dir, &app.database_url);
    cmd.args(["posture", "check"]).arg(file);
    if let Some(key) = key {
        cmd.args(["--key", key]);
    }
    cmd.output().unwrap()
}

/// Writes `text` to a file and checks it as a saved report: it must verify.
fn assert_verifies(app: &crate::helpers::TestApp, text: &str, key: Option<&str>) {
    let file = crate::helpers::temp_dir("posture-saved").join("report.json");
    std::fs::write(&file, text).unwrap();
    let checked = posture_check(app, &file, key);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// One control of a signed report.
fn control(document: &serde_json::Value, id: &str) -> serde_json::Value {
    document["report"]["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap()
        .clone()
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
    let check = |file: &std::path::Path, key: Option<&str>| posture_check(&app, file, key);
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

#[tokio::test]
async fn ctl_pos_1_the_instance_view_needs_an_operator_session_and_serves_the_kept_report() {
    use crate::helpers::RunOff;
    let app = crate::helpers::spawn_app().await;
    let admin = app.admin("acme").await;
    let operator_token = app.operator("security_officer").await;
    let support = app.operator("support").await;
    let url = format!("{}/api/v1/ops/posture", app.address);
    let get = |token: Option<&str>, query: &str| {
        let mut request = app.client.get(format!("{url}{query}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        crate::helpers::send(request)
    };
    for wrong in [
        None,
        Some("sr_ops_not-a-session-of-anyone"),
        Some("short"),
        Some(admin.access_token.as_str()),
    ] {
        let (status, body) = get(wrong, "").await;
        assert_eq!(status, 401, "{body}");
    }
    // A role the route does not name is refused.
    let (status, body) = get(Some(&support), "").await;
    assert_eq!(status, 403, "{body}");
    // `strongroom verify` keeps the instance's report, as the posture job does.
    let out = app.cli().await.args(["verify"]).run().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (status, kept) = get(Some(&operator_token), "").await;
    assert_eq!(status, 200, "{kept}");
    assert!(kept["age_seconds"].as_i64().unwrap() < 120, "{kept}");
    assert_eq!(kept["failing"], 0);
    let signed = &kept["signed"];
    assert_eq!(signed["report"]["scope"], "instance");
    assert_eq!(signed["public_key"], published_key(&app).await.as_str());
    assert_eq!(signed["report"]["controls"].as_array().unwrap().len(), 58);
    let net4 = control(signed, "NET-4");
    assert_eq!(net4["verdict"], "pass", "{net4}");
    // The document verifies offline as it was served.
    assert_verifies(&app, &signed.to_string(), None);
    // A fresh one now: the front door's verdicts come from the kept report.
    let (status, fresh) = get(Some(&operator_token), "?fresh=true").await;
    assert_eq!(status, 200, "{fresh}");
    assert_ne!(fresh["taken_at"], kept["taken_at"]);
    let net4 = control(&fresh["signed"], "NET-4");
    assert!(
        net4["evidence"]
            .as_str()
            .unwrap()
            .contains("(posture job, "),
        "{net4}"
    );
    for (query, status) in [("?fresh=maybe", 422), ("?tenant=acme", 400)] {
        assert_eq!(get(Some(&operator_token), query).await.0, status, "{query}");
    }
}

#[tokio::test]
async fn ctl_pos_1_a_tenants_view_says_nothing_about_another_tenant() {
    let app = crate::helpers::spawn_app().await;
    let acme = app.admin("acme").await;
    app.work_orders(&acme).await;
    app.create_order(&acme, serde_json::json!({"title": "pump", "notes": "a"}))
        .await;
    let globex = app.admin("globex-hidden").await;
    app.work_orders(&globex).await;
    for n in 0..3 {
        app.create_order(
            &globex,
            serde_json::json!({"title": format!("t{n}"), "notes": "b"}),
        )
        .await;
    }
    let view = |token: String| {
        let url = format!("{}/api/v1/tenant/posture", app.address);
        let client = app.client.clone();
        async move {
            let res = client.get(url).bearer_auth(token).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (status, text) = view(acme.access_token.clone()).await;
    assert_eq!(status, 200, "{text}");
    for other in [globex.tenant_id.as_str(), "globex", "2 tenants", "of 2"] {
        assert!(!text.contains(other), "acme's view names {other:?}: {text}");
    }
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();
    let report = &document["report"];
    assert_eq!(report["scope"]["tenant"]["slug"], "acme");
    assert_eq!(report["scope"]["tenant"]["id"], acme.tenant_id.as_str());
    let enc2 = control(&document, "ENC-2");
    assert!(
        enc2["evidence"]
            .as_str()
            .unwrap()
            .contains("1 values of encrypted fields in 1 records"),
        "{enc2}"
    );
    assert!(
        control(&document, "AUD-7")["evidence"]
            .as_str()
            .unwrap()
            .contains("this tenant")
    );
    // Globex's own view counts its three records.
    let (_, theirs) = view(globex.access_token.clone()).await;
    assert!(
        theirs.contains("3 values of encrypted fields in 3 records"),
        "{theirs}"
    );
    assert!(!theirs.contains(&acme.tenant_id));
    // Auditors may read it; members may not.
    let auditor = app.user(&acme, "auditor@acme.test", "auditor").await;
    assert_eq!(view(auditor.access_token.clone()).await.0, 200);
    let member = app.user(&acme, "member@acme.test", "member").await;
    assert_eq!(view(member.access_token.clone()).await.0, 403);
    // The signed document verifies against the instance's published key.
    assert_verifies(&app, &text, Some(&published_key(&app).await));
}

#[tokio::test]
async fn ctl_pos_1_the_trust_page_is_one_self_contained_page_under_a_strict_policy() {
    let app = crate::helpers::spawn_app().await;
    let acme = app.admin("acme").await;
    let res = app
        .client
        .get(format!("{}/api/v1/tenant/posture?format=html", app.address))
        .bearer_auth(&acme.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let header = |name: &str| res.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    let csp = header("content-security-policy");
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    let html = res.text().await.unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("Security posture of acme Ltd (acme)"));
    for outside in [
        "<script", "src=", "href=", "http://", "https://", "@import", "url(",
    ] {
        assert!(!html.contains(outside), "the page holds {outside:?}");
    }
    assert_eq!(html.matches("<tr><td class=\"id\">").count(), 58);
    let (status, body) = crate::helpers::send(
        app.client
            .get(format!("{}/api/v1/tenant/posture?format=pdf", app.address))
            .bearer_auth(&acme.access_token),
    )
    .await;
    assert_eq!(status, 422, "{body}");

    // In a real browser: no console error or warning (a CSP violation is
    // one), no script error, no request but the page itself.
    let Some(chromium) = std::env::var_os("STRONGROOM_TEST_CHROMIUM") else {
        panic!(
            "STRONGROOM_TEST_CHROMIUM is unset: run the suite with scripts/test, which installs Chromium"
        );
    };
    let shot = crate::helpers::temp_dir("trust-page").join("trust-page.png");
    let url = format!("{}/api/v1/tenant/posture?format=html", app.address);
    let out = {
        use crate::helpers::RunOff;
        let mut command = std::process::Command::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/trust-page"),
        );
        command
            .env("STRONGROOM_CHROMIUM", chromium)
            .args([&url, &acme.access_token])
            .arg(&shot);
        command.run().await.unwrap()
    };
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{seen}");
    assert_eq!(seen["status"], 200);
    assert_eq!(seen["rows"], 58, "{seen}");
    assert_eq!(seen["requests"], serde_json::json!([url]), "{seen}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}
