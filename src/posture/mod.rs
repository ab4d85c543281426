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

mod advisories;
mod backups;
pub mod checks;
mod finding;
pub mod http;
mod page;
mod sampled;
pub mod signed;

use serde::{Deserialize, Serialize};

pub use finding::{Finding, Probe, Reach, Verdict};

use crate::context::TenantScope;
use crate::store::{Store, StoreError, db};

/// The scheduled job that runs every check and keeps the signed report.
pub const JOB: &str = "posture.check";

/// How long kept reports stay.
const KEEP_DAYS: i64 = 30;

/// The schema migration that brought `posture_reports`.
const SCHEMA: i64 = 9;

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

/// Whether the report fails: a control (enforced, or partial in what is
/// built) whose check fails.
pub fn fails(report: &[Reported]) -> bool {
    failing(report) > 0
}

/// How many controls fail their check.
pub fn failing(report: &[Reported]) -> usize {
    report
        .iter()
        .filter(|r| r.verdict == Some(Verdict::Fail))
        .count()
}

/// Runs every check over `scopes` and puts the verdicts beside the
/// catalog; `extra` are findings made elsewhere (the front door's, which
/// the HTTP layer probes).
pub async fn take(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
    extra: Vec<Finding>,
) -> Result<Vec<Reported>, StoreError> {
    let mut findings = checks::run(probe, scopes, reach).await?;
    findings.extend(extra);
    Ok(report(catalog(), findings))
}

/// A report the posture job kept.
#[derive(Debug, Serialize)]
pub struct Kept {
    pub taken_at: String,
    pub node: String,
    pub failing: i64,
    /// The signed document, as `strongroom verify --signed` prints it.
    pub document: serde_json::Value,
}

/// Keeps a signed instance report, and forgets those older than 30 days.
pub async fn keep(
    store: &Store,
    document: &serde_json::Value,
    failing: usize,
) -> Result<(), StoreError> {
    if !store.schema_has(SCHEMA) {
        return Ok(());
    }
    let (node, text) = (store.node().to_owned(), document.to_string());
    let cutoff = crate::clock::in_seconds(-KEEP_DAYS * 86_400);
    store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                db::query(
                    "INSERT INTO posture_reports (id, taken_at, node, failing, document) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(crate::clock::now())
                .bind(node)
                .bind(failing as i64)
                .bind(text)
                .execute(&mut *conn)
                .await?;
                db::query("DELETE FROM posture_reports WHERE taken_at < $1")
                    .bind(cutoff)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
}

/// The newest kept report.
pub async fn last(store: &Store) -> Result<Option<Kept>, StoreError> {
    if !store.schema_has(SCHEMA) {
        return Ok(None);
    }
    let mut tx = store.read_unscoped().await?;
    let row = db::query(
        "SELECT taken_at, node, failing, document FROM posture_reports \
         ORDER BY taken_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.try_get(3)?;
    Ok(Some(Kept {
        taken_at: row.try_get(0)?,
        node: row.try_get(1)?,
        failing: row.try_get(2)?,
        document: serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("kept posture report: {e}")))?,
    }))
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
