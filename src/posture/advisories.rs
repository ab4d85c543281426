//! OPS-2 at run time: the packages compiled into this binary (its
//! `Cargo.lock`, embedded at build) against a RustSec advisory database on
//! disk (`advisory_db`, a checkout of `rustsec/advisory-db`), the same
//! question `cargo audit --deny warnings` answers in the test command —
//! asked again of the running build, against whatever the database knows
//! today. Advisories the project ignores on purpose (`.cargo/audit.toml`,
//! each with its reason there) are ignored here too.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::finding::{Finding, Verdict, finding};

const LOCK: &str = include_str!("../../Cargo.lock");
const AUDIT_TOML: &str = include_str!("../../.cargo/audit.toml");

#[derive(Deserialize)]
struct Lock {
    package: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    version: String,
}

#[derive(Deserialize)]
struct AuditToml {
    advisories: Ignores,
}

#[derive(Deserialize)]
struct Ignores {
    ignore: Vec<String>,
}

#[derive(Deserialize)]
struct Advisory {
    advisory: Head,
    #[serde(default)]
    versions: Versions,
}

#[derive(Deserialize)]
struct Head {
    id: String,
    package: String,
    #[serde(default)]
    withdrawn: Option<toml::Value>,
    #[serde(default)]
    informational: Option<String>,
}

#[derive(Default, Deserialize)]
struct Versions {
    #[serde(default)]
    patched: Vec<String>,
    #[serde(default)]
    unaffected: Vec<String>,
}

/// The packages of the embedded lock, by name.
fn packages() -> HashMap<String, Vec<semver::Version>> {
    let mut out: HashMap<String, Vec<semver::Version>> = HashMap::new();
    if let Ok(lock) = toml::from_str::<Lock>(LOCK) {
        for p in lock.package {
            if let Ok(v) = semver::Version::parse(&p.version) {
                out.entry(p.name).or_default().push(v);
            }
        }
    }
    out
}

fn ignored() -> Vec<String> {
    toml::from_str::<AuditToml>(AUDIT_TOML)
        .map(|a| a.advisories.ignore)
        .unwrap_or_default()
}

/// The TOML front matter of an advisory file (between its ```toml fences).
fn front_matter(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix("```toml")?;
    Some(&rest[..rest.find("```")?])
}

/// Whether `version` is covered by none of the patched or unaffected
/// ranges.
fn affects(versions: &Versions, version: &semver::Version) -> Result<bool, String> {
    for range in versions.patched.iter().chain(&versions.unaffected) {
        let req = semver::VersionReq::parse(range).map_err(|e| format!("{range:?}: {e}"))?;
        if req.matches(version) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The OPS-2 finding for the database at `db`, if one is configured.
pub fn check(db: Option<&Path>) -> Finding {
    let Some(db) = db else {
        return finding(
            "OPS-2",
            Verdict::Warn,
            "no advisory_db configured: the test command checked this Cargo.lock with cargo \
             audit at build; set advisory_db to a RustSec advisory-db checkout to check the \
             running build against today's advisories"
                .to_owned(),
        );
    };
    let crates = db.join("crates");
    if !crates.is_dir() {
        return finding(
            "OPS-2",
            Verdict::Fail,
            format!(
                "advisory_db {} is not an advisory database (no crates/)",
                db.display()
            ),
        );
    }
    let packages = packages();
    let ignore = ignored();
    let (mut read, mut found, mut unreadable) = (0, Vec::new(), Vec::new());
    for (name, versions) in &packages {
        let Ok(entries) = std::fs::read_dir(crates.join(name)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    let head = front_matter(&text)
                        .ok_or("no TOML front matter")?
                        .to_owned();
                    toml::from_str::<Advisory>(&head).map_err(|e| e.to_string())
                });
            let advisory = match parsed {
                Ok(a) => a,
                Err(e) => {
                    unreadable.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            read += 1;
            if advisory.advisory.withdrawn.is_some()
                || advisory.advisory.package != *name
                || ignore.contains(&advisory.advisory.id)
            {
                continue;
            }
            for version in versions {
                match affects(&advisory.versions, version) {
                    Ok(true) => found.push(format!(
                        "{} {name} {version}{}",
                        advisory.advisory.id,
                        advisory
                            .advisory
                            .informational
                            .as_deref()
                            .map(|i| format!(" ({i})"))
                            .unwrap_or_default()
                    )),
                    Ok(false) => {}
                    Err(e) => unreadable.push(format!("{}: {e}", advisory.advisory.id)),
                }
            }
        }
    }
    let total: usize = packages.values().map(Vec::len).sum();
    if !found.is_empty() || !unreadable.is_empty() {
        let mut problems = found;
        problems.extend(unreadable.into_iter().map(|u| format!("unreadable: {u}")));
        return finding("OPS-2", Verdict::Fail, problems.join("; "));
    }
    finding(
        "OPS-2",
        Verdict::Pass,
        format!(
            "none of the {total} packages of this build's Cargo.lock is named by any of the \
             {read} advisories {} holds for them{}",
            db.display(),
            if ignore.is_empty() {
                String::new()
            } else {
                format!(
                    " (ignored on purpose, see .cargo/audit.toml: {})",
                    ignore.join(", ")
                )
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_outside_every_patched_range_is_affected() {
        let versions = Versions {
            patched: vec![">= 0.3.47".into()],
            unaffected: vec!["< 0.3.6".into()],
        };
        let v = |s: &str| semver::Version::parse(s).unwrap();
        assert!(affects(&versions, &v("0.3.20")).unwrap());
        assert!(!affects(&versions, &v("0.3.47")).unwrap());
        assert!(!affects(&versions, &v("0.3.1")).unwrap());
        assert!(!packages().is_empty());
        assert!(ignored().contains(&"RUSTSEC-2023-0071".to_owned()));
        assert_eq!(
            front_matter("```toml\na = 1\n```\n# text"),
            Some("\na = 1\n")
        );
    }
}
