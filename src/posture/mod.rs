//! The posture domain (POS-1, first part): one catalog of every control of
//! `CONTROLS.md` — its promise, the seeds that make it, what the code does
//! about it today, what is missing, and the tests that prove it. Controls
//! not built yet are listed as `not_built`, never hidden. The README's
//! control table is generated from it (`strongroom controls --markdown`),
//! and `tests/api/posture.rs` fails when the two differ or when the catalog
//! names a test that does not exist.
//!
//! Live checks ([`checks`]) look at the running instance and give some
//! controls a verdict with evidence now; [`report`] puts both together for
//! `strongroom verify`. Every later control adds its entry, and its live
//! check, here.

pub mod checks;
pub mod http;
pub mod signed;

use serde::{Deserialize, Serialize};

pub use checks::{Finding, Verdict};

/// The catalog as data: `controls.toml`, compiled into the binary.
const CATALOG: &str = include_str!("controls.toml");

/// The controls in catalog order, 58 of them.
pub const CONTROLS: usize = 58;

/// How far a control is built.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Reachable by a user and proved end to end.
    Enforced,
    /// Some of it: `missing` says what is not.
    Partial,
    NotBuilt,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enforced => "enforced",
            Status::Partial => "partial",
            Status::NotBuilt => "not built",
        }
    }
}

/// One control.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub id: String,
    pub title: String,
    /// The promise, in the catalog's words.
    pub promise: String,
    /// The seed policies that make it (`000`…`004`), or `beyond`.
    pub seeds: Vec<String>,
    pub status: Status,
    /// What the code does about it.
    #[serde(default)]
    pub how: String,
    /// What is still missing.
    #[serde(default)]
    pub missing: String,
    /// The tests that prove it.
    pub tests: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    control: Vec<Control>,
}

/// Every control, in catalog order.
pub fn catalog() -> Vec<Control> {
    // The file is part of the build and a unit test parses it: it cannot
    // fail at run time unless that test failed.
    toml::from_str::<File>(CATALOG)
        .map(|file| file.control)
        .unwrap_or_default()
}

/// One control as the report shows it: the catalog's word and, where a
/// live check exists, its verdict and evidence now.
#[derive(Clone, Debug, Serialize)]
pub struct Reported {
    pub id: String,
    pub title: String,
    pub status: Status,
    pub verdict: Option<Verdict>,
    pub evidence: Option<String>,
}

/// Every control of the catalog with what the checks found.
pub fn report(controls: Vec<Control>, findings: Vec<Finding>) -> Vec<Reported> {
    controls
        .into_iter()
        .map(|control| {
            let found = findings.iter().find(|f| f.control == control.id);
            Reported {
                verdict: found.map(|f| f.verdict),
                evidence: found.map(|f| f.evidence.clone()),
                id: control.id,
                title: control.title,
                status: control.status,
            }
        })
        .collect()
}

/// Whether the report fails: an enforced control whose check fails.
pub fn fails(report: &[Reported]) -> bool {
    report
        .iter()
        .any(|r| r.status == Status::Enforced && r.verdict == Some(Verdict::Fail))
}

/// The README's control table, generated.
pub fn markdown(controls: &[Control]) -> String {
    let cell = |text: &str| text.replace('|', "\\|");
    let mut out =
        String::from("| control | status | how | missing | tests |\n|---|---|---|---|---|\n");
    for control in controls {
        let tests: Vec<String> = control.tests.iter().map(|t| format!("`{t}`")).collect();
        let how = match control.how.as_str() {
            "" => cell(&control.title),
            how => cell(how),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            control.id,
            control.status.as_str(),
            how,
            cell(&control.missing),
            tests.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_parses_and_holds_every_control_once_in_order() {
        let file: File = toml::from_str(CATALOG).expect("controls.toml parses");
        let controls = file.control;
        assert_eq!(controls.len(), CONTROLS);
        let mut ids: Vec<&str> = controls.iter().map(|c| c.id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), CONTROLS, "an id twice");
        for control in &controls {
            assert!(!control.promise.is_empty(), "{}", control.id);
            match control.status {
                Status::Enforced => assert!(
                    control.missing.is_empty() && !control.tests.is_empty(),
                    "{} is enforced: tests and nothing missing",
                    control.id
                ),
                Status::Partial | Status::NotBuilt => {
                    assert!(
                        !control.missing.is_empty(),
                        "{} says what is missing",
                        control.id
                    )
                }
            }
        }
    }
}
