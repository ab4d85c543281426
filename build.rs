//! Stamps the build with `<crate version>+<git hash>` (DESIGN.md invariant 7):
//! the version goes into `/healthz`, every audit event and every journal entry.
use std::process::Command;

fn main() {
    let hash = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=STRONGROOM_BUILD_VERSION={version}+{hash}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    mail_languages();
}

/// Every `templates/mail/<language>.toml` becomes part of the binary
/// (`mail::templates`): adding a language is adding a file.
fn mail_languages() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/mail");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut languages: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .expect("templates/mail exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .filter_map(|path| Some((path.file_stem()?.to_str()?.to_owned(), path.clone())))
        .collect();
    languages.sort();
    let mut out = String::from("/// (language code, template file) for every language.\n");
    out.push_str("pub const LANGUAGES: &[(&str, &str)] = &[\n");
    for (code, path) in &languages {
        println!("cargo:rerun-if-changed={}", path.display());
        out.push_str(&format!(
            "    ({code:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let target = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("mail_languages.rs");
    std::fs::write(target, out).expect("OUT_DIR is writable");
}
