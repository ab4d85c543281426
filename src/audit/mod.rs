//! The audit trail: one event per action, written by the one write path in
//! the same transaction as the change it describes (AUD-1, first cut), with
//! the running application version in every event (OPS-6).
//!
//! An event carries who (actor type, id, e-mail), from where (IP, user
//! agent, request id), what (action, outcome, target) and the data changed
//! as a before/after diff of the changed fields only; values of sensitive
//! fields are replaced by `"[redacted]"` (AUD-3). Tenant admins read the
//! trail with `GET /api/v1/audit`.

pub mod access_log;
pub mod export;
mod http;
mod integrity;
mod query;
mod retention;

pub use crate::context::{Actor, ActorKind, Outcome, RequestMeta, Target};
pub use crate::store::chain;
pub use chain::{GENESIS, Hash, from_hex as chain_hash_from_hex, to_hex as hash_to_hex};
pub use http::{access_log_router, router};
pub use integrity::{
    Checkpoint, VerifyReport, checkpoint_all, resign_checkpoints, shipped_checkpoint, verify,
    verify_against, verify_in_halves, verify_with_target,
};
pub use query::{AuditError, AuditEvent, AuditFilter, Page, list};
pub use retention::{JOB as RETENTION_JOB, RetentionSummary, apply_retention};
