//! The imports run one way (README, "Layers"): http → domains → write path
//! → data layer, with the request context and the configuration below them
//! all. This reads every `crate::…` path in `src/` and fails on one that
//! points up, so a circle cannot come back unnoticed.

use std::path::{Path, PathBuf};

/// The modules a file may name, by where it lives. `None`: no rule.
fn allowed(file: &Path) -> Option<&'static [&'static str]> {
    let path = file.to_string_lossy();
    let rel = path.split("src/").last().unwrap_or("");
    const BOTTOM: &[&str] = &["VERSION", "clock", "context", "config", "metrics", "json"];
    Some(match rel {
        "context.rs" | "clock.rs" | "json.rs" => &["VERSION", "clock", "context"],
        r if r == "config.rs" || r.starts_with("config/") => &["config"],
        r if r.starts_with("store/") => &["VERSION", "clock", "context", "store", "metrics"],
        // The HTTP toolkit the domains' handlers use may map domain errors
        // and read domain types, never a domain's handlers or the wiring.
        "http/api.rs" | "http/error.rs" | "http/extract.rs" | "http/state.rs"
        | "http/client_ip.rs" => &[
            "VERSION",
            "clock",
            "context",
            "config",
            "store",
            "access",
            "audit",
            "backup",
            "crypto",
            "files",
            "identity",
            "mail",
            "ops",
            "operators",
            "records",
            "tenancy",
            "http",
            "metrics",
            "json",
        ],
        "telemetry.rs" => BOTTOM,
        "lib.rs" | "main.rs" => return None,
        r if r.starts_with("cli/") || r.starts_with("http/") => return None,
        // A domain's handlers (`http.rs`, and `settings.rs` with its router)
        // use the toolkit; the rest of a domain never touches HTTP or CLI.
        r if r.ends_with("/http.rs") || r == "tenancy/settings.rs" => return None,
        _ => &[
            "VERSION",
            "clock",
            "context",
            "config",
            "store",
            "access",
            "audit",
            "backup",
            "crypto",
            "files",
            "identity",
            "keys",
            "mail",
            "ops",
            "operators",
            "records",
            "tenancy",
            "telemetry",
            "metrics",
            "json",
        ],
    })
}

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

/// Every module named as `crate::name` in `text`, outside comments.
fn named_modules(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                // `use crate::{a, b}`: each item of the group.
                if let Some(group) = after.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or("");
                    names.extend(
                        group
                            .split(',')
                            .map(|item| item.trim().split("::").next().unwrap_or("").to_owned())
                            .filter(|n| !n.is_empty()),
                    );
                }
            } else {
                names.push(name);
            }
            rest = after;
        }
    }
    names
}

#[test]
fn imports_run_from_http_through_the_domains_to_the_write_path_and_the_data_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    // Only modules count: `crate::VERSION` or a helper in lib.rs is no layer.
    let modules: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut upward = Vec::new();
    let mut checked = 0;
    for file in &files {
        let Some(allowed) = allowed(file) else {
            continue;
        };
        checked += 1;
        // Unit tests inside a file may reach anywhere.
        let text = std::fs::read_to_string(file).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        for name in named_modules(text) {
            if modules.contains(&name) && !allowed.contains(&name.as_str()) {
                upward.push(format!("{} names crate::{name}", file.display()));
            }
        }
    }
    assert!(checked > 15, "the rules covered only {checked} files");
    assert!(
        upward.is_empty(),
        "imports that run up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_layering_check_sees_an_upward_import() {
    assert_eq!(
        named_modules("use crate::http::AppState; // crate::cli in a comment"),
        ["http"]
    );
    assert_eq!(
        named_modules("use crate::{store::Store, context::Permit};"),
        ["store", "context"]
    );
    let store_rules = allowed(Path::new("/x/src/store/write.rs")).unwrap();
    assert!(!store_rules.contains(&"access"));
    assert!(!store_rules.contains(&"http"));
}
