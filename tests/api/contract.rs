//! The API contract (POS-1): `/openapi.json` says what the server does.
//! Schemathesis, with every check, drives a live server process on this
//! pass's database and object store for a bounded time
//! (`scripts/contract/run`, STRONGROOM_CONTRACT_SECONDS, 120 by default),
//! authenticated as a tenant admin, and any finding fails the test.

use crate::helpers::RunOff;

#[tokio::test]
async fn ctl_pos_1_the_api_contract_holds_under_schemathesis() {
    let Some(python) = std::env::var_os("STRONGROOM_TEST_PYTHON") else {
        panic!(
            "STRONGROOM_TEST_PYTHON is unset: run the suite with scripts/test, which installs \
             schemathesis into target/test-venv"
        );
    };
    // target/test-venv/bin/python → target/test-venv
    let venv = std::path::Path::new(&python)
        .parent()
        .and_then(|bin| bin.parent())
        .unwrap()
        .to_owned();
    let seconds = std::env::var("STRONGROOM_CONTRACT_SECONDS").unwrap_or_else(|_| "120".into());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = std::process::Command::new(root.join("scripts/contract/run"));
    command
        .arg(env!("CARGO_BIN_EXE_strongroom"))
        .arg(&venv)
        .arg(&seconds);
    if crate::helpers::is_postgres() {
        let dir = crate::helpers::temp_dir("contract");
        command.env(
            "STRONGROOM_DATABASE_URL",
            crate::helpers::fresh_database(&dir).await,
        );
    }
    if let Ok(endpoint) = std::env::var("STRONGROOM_TEST_S3_ENDPOINT") {
        command
            .env(
                "STRONGROOM_OBJECT_STORE_URL",
                format!(
                    "s3://strongroom-test/{}?endpoint={endpoint}&region=us-east-1",
                    uuid::Uuid::new_v4().simple()
                ),
            )
            .env("STRONGROOM_OBJECT_STORE_ACCESS_KEY_ID", "test")
            .env("STRONGROOM_OBJECT_STORE_SECRET_ACCESS_KEY", "test");
    }
    let out = command.run().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found what /openapi.json does not say:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for phase in ["✅ Coverage", "✅ Fuzzing", "✅ Stateful"] {
        assert!(stdout.contains(phase), "{phase} missing:\n{stdout}");
    }
}
