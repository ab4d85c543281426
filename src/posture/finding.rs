//! What a live check finds (POS-1), and what the checks look at: the
//! vocabulary every check module shares, below them all.

use serde::Serialize;

use crate::config::Config;
use crate::crypto::{Keyring, Vault};
use crate::store::Store;

#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Warn,
}

/// What one check found.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub control: &'static str,
    pub verdict: Verdict,
    pub evidence: String,
}

pub(super) fn finding(control: &'static str, verdict: Verdict, evidence: String) -> Finding {
    Finding {
        control,
        verdict,
        evidence,
    }
}

/// What the checks look at: the instance's store, keys, object stores and
/// configuration.
pub struct Probe<'a> {
    pub store: &'a Store,
    pub vault: &'a Vault,
    pub keyring: &'a Keyring,
    pub files: crate::files::Files,
    pub config: &'a Config,
    /// Whether the posture job itself takes this report (its own heartbeat
    /// is written after it).
    pub by_job: bool,
}

/// Whom a report is for: the operator sees the whole instance; a tenant
/// sees its own data and the instance's settings, never another tenant's
/// names or counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    Instance,
    Tenant,
}

impl Reach {
    /// "all 3 tenants", or "this tenant".
    pub(super) fn tenants(self, n: usize) -> String {
        match self {
            Reach::Instance if n == 1 => "the one tenant".to_owned(),
            Reach::Instance => format!("all {n} tenants"),
            Reach::Tenant => "this tenant".to_owned(),
        }
    }
}
