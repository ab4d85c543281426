//! The supply chain (OPS-2): every crate in `Cargo.lock` is checked
//! against the RustSec advisories (an offline snapshot), and a known
//! vulnerability fails the build; an ignored advisory says why.

use crate::helpers::temp_dir;

fn advisory_db() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        std::env::var("STRONGROOM_ADVISORY_DB").ok().map(Into::into),
        Some(root.join("../shared/advisory-db")),
        Some("/work/shared/advisory-db".into()),
    ]
    .into_iter()
    .flatten()
    .find(|p: &std::path::PathBuf| p.is_dir())
    .expect("a RustSec advisory-db snapshot (STRONGROOM_ADVISORY_DB)")
}

fn cargo_audit(dir: &std::path::Path, lock: &std::path::Path) -> std::process::Output {
    std::process::Command::new("cargo")
        .current_dir(dir)
        .args(["audit", "--no-fetch", "--deny", "warnings", "--db"])
        .arg(advisory_db())
        .arg("--file")
        .arg(lock)
        .output()
        .expect("cargo audit runs (scripts/test installs it)")
}

#[test]
fn ctl_ops_2_a_known_vulnerability_in_the_lock_file_fails_the_audit() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Our own lock file passes, with the ignores of .cargo/audit.toml.
    let ours = cargo_audit(root, &root.join("Cargo.lock"));
    assert!(
        ours.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&ours.stderr)
    );
    // A lock file with a crate the advisories name fails it.
    let dir = temp_dir("audit");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join("Cargo.lock");
    std::fs::write(
        &lock,
        "version = 4\n\n[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\n\
         source = \"registry+https://github.com/rust-lang/crates.io-index\"\n",
    )
    .unwrap();
    let vulnerable = cargo_audit(&dir, &lock);
    let said = String::from_utf8_lossy(&vulnerable.stdout);
    assert!(!vulnerable.status.success(), "{said}");
    assert!(said.contains("RUSTSEC-2021-0003"), "{said}");
    // Every ignored advisory carries its reason right above it.
    let config = std::fs::read_to_string(root.join(".cargo/audit.toml")).unwrap();
    let lines: Vec<&str> = config.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("\"RUSTSEC-") {
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "an ignored advisory without a reason: {line}"
            );
        }
    }
}
