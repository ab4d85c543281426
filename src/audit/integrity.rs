//! Signed checkpoints and verification of the chain (AUD-7).
//!
//! The hash chain alone catches edits made without recomputing hashes;
//! someone with database access could recompute them. Checkpoints close
//! that gap: every so often the head `(tenant, seq, hash, time)` is signed
//! with an Ed25519 key derived from the master key (which the database does
//! not hold), so a rewritten or truncated chain no longer matches a
//! signature. [`verify`] walks a tenant's chain from its anchor and names the
//! first sequence number at which anything was modified, deleted, inserted
//! or reordered.

use std::borrow::Cow;
use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Serialize;

use super::chain::{self, Chained, GENESIS, Hash, checkpoint_message, from_hex, hex_bytes, to_hex};
use crate::backup::BackupTarget;
use crate::context::TenantScope;
use crate::store::db;
use crate::store::{Store, StoreError};
use crate::tenancy;

/// Signs the current head of every tenant whose trail moved since its last
/// checkpoint; returns how many checkpoints were written. With `outside`
/// (the backup target) each checkpoint is written there first, and only
/// then kept in the database: what the database says was signed, the
/// target holds too, out of reach of whoever can rewrite the database.
/// A tenant whose new events do not chain from its last checkpoint to its
/// head gets no checkpoint: the job fails naming it.
pub async fn checkpoint_all(
    store: &Store,
    key: &SigningKey,
    outside: Option<&BackupTarget>,
) -> Result<usize, StoreError> {
    let mut written = 0;
    let mut refused = Vec::new();
    for scope in tenancy::all_scopes(store).await? {
        match checkpoint(store, &scope, key, outside).await {
            Ok(true) => written += 1,
            Ok(false) => {}
            Err(StoreError::Corrupt(why)) => refused.push(why),
            Err(e) => return Err(e),
        }
    }
    if refused.is_empty() {
        Ok(written)
    } else {
        Err(StoreError::Corrupt(refused.join("; ")))
    }
}

/// A signed checkpoint as it is kept outside the database.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub tenant_id: String,
    pub seq: i64,
    pub hash: String,
    pub signed_at: String,
    pub signature: String,
}

async fn checkpoint(
    store: &Store,
    scope: &TenantScope,
    key: &SigningKey,
    outside: Option<&BackupTarget>,
) -> Result<bool, StoreError> {
    type Row = (i64, Option<String>, i64, Option<String>, Option<Checkpoint>);
    let (seq, head, anchor_seq, anchor_hash, last): Row = {
        let mut tx = store.read(scope).await?;
        let row = db::query(
            "SELECT s.audit_seq, s.audit_head, s.audit_anchor_seq, s.audit_anchor_hash, \
             c.seq, c.hash, c.signed_at, c.signature FROM tenant_sequences s \
             LEFT JOIN audit_checkpoints c ON c.tenant_id = s.tenant_id AND c.seq = \
             (SELECT MAX(seq) FROM audit_checkpoints m WHERE m.tenant_id = s.tenant_id) \
             WHERE s.tenant_id = $1",
        )
        .bind(scope.id_str())
        .fetch_optional(tx.conn())
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let last = match row.try_get::<Option<i64>, _>(4)? {
            Some(seq) => Some(Checkpoint {
                tenant_id: scope.id_str().to_owned(),
                seq,
                hash: row.try_get(5)?,
                signed_at: row.try_get(6)?,
                signature: row.try_get(7)?,
            }),
            None => None,
        };
        (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            last,
        )
    };
    let Some(head) = head else {
        return Ok(false);
    };
    if last.as_ref().is_some_and(|last| last.seq >= seq) {
        return Ok(false);
    }
    // What is signed must be the chain: the events since the last
    // checkpoint (or the retention anchor) are walked to the head first.
    let refuse = |why: String| {
        tracing::error!(
            target: "security",
            event = "audit.checkpoint_refused",
            tenant = scope.id_str(),
            "the audit trail does not verify; no checkpoint signed: {why}"
        );
        StoreError::Corrupt(format!(
            "tenant {}: no checkpoint signed: {why}",
            scope.id_str()
        ))
    };
    let (after, prev) = match last.as_ref().filter(|last| last.seq > anchor_seq) {
        Some(last) => {
            let message = checkpoint_message(scope.id_str(), last.seq, &last.hash, &last.signed_at);
            let genuine = decode_signature(&last.signature)
                .is_some_and(|sig| key.verifying_key().verify(message.as_bytes(), &sig).is_ok());
            if !genuine {
                return Err(refuse(format!(
                    "the checkpoint at seq {} has an invalid signature",
                    last.seq
                )));
            }
            let prev =
                from_hex(&last.hash).ok_or_else(|| refuse("a bad checkpoint hash".into()))?;
            (last.seq, prev)
        }
        None => match anchor_hash.as_deref() {
            Some(hex) => (
                anchor_seq,
                from_hex(hex).ok_or_else(|| refuse("a bad anchor hash".into()))?,
            ),
            None => (anchor_seq, GENESIS),
        },
    };
    if let Err((_, why)) = verify_since(store, scope, after, prev, seq, &head).await? {
        return Err(refuse(why));
    }
    let signed_at = crate::clock::now();
    let message = checkpoint_message(scope.id_str(), seq, &head, &signed_at);
    let signature = to_hex(&key.sign(message.as_bytes()).to_bytes());
    let signed = Checkpoint {
        tenant_id: scope.id_str().to_owned(),
        seq,
        hash: head,
        signed_at,
        signature,
    };
    if let Some(target) = outside {
        target
            .put_checkpoint(
                scope.id_str(),
                seq,
                serde_json::to_vec(&signed).unwrap_or_default(),
            )
            .await
            .map_err(|e| {
                StoreError::Native(format!(
                    "tenant {}: the checkpoint could not be written to the backup target: {e}",
                    scope.id_str()
                ))
            })?;
    }
    let tenant = scope.id_str().to_owned();
    store
        .append_internal(Some(scope), move |conn| {
            Box::pin(async move {
                db::query(
                    "INSERT INTO audit_checkpoints (tenant_id, seq, hash, signed_at, signature) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&tenant)
                .bind(signed.seq)
                .bind(&signed.hash)
                .bind(&signed.signed_at)
                .bind(&signed.signature)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await?;
    Ok(true)
}

/// The newest checkpoint of a tenant kept in the backup target, if any.
pub async fn shipped_checkpoint(
    target: &BackupTarget,
    tenant: &str,
) -> Result<Option<Checkpoint>, StoreError> {
    let bytes = target.newest_checkpoint(tenant).await.map_err(|e| {
        StoreError::Native(format!(
            "cannot read checkpoints from the backup target: {e}"
        ))
    })?;
    bytes
        .map(|b| {
            serde_json::from_slice(&b).map_err(|e| {
                StoreError::Corrupt(format!(
                    "tenant {tenant}: a checkpoint in the backup target does not parse: {e}"
                ))
            })
        })
        .transpose()
}

/// [`verify`] against the newest checkpoint in the backup target when
/// backups are on (`target`), else against the database's alone.
pub async fn verify_with_target(
    store: &Store,
    scope: &TenantScope,
    key: &VerifyingKey,
    target: Option<&BackupTarget>,
) -> Result<VerifyReport, StoreError> {
    let shipped = match target {
        Some(target) => shipped_checkpoint(target, scope.id_str()).await?,
        None => None,
    };
    verify_against(store, scope, key, shipped).await
}

/// The events after `after` (whose hash is `prev`) up to `head_seq`: they
/// must be there, chain, and end in `head`.
async fn verify_since(
    store: &Store,
    scope: &TenantScope,
    after: i64,
    prev: Hash,
    head_seq: i64,
    head: &str,
) -> Result<Result<(), Failure>, StoreError> {
    let tenant = scope.id_str();
    let mut tx = store.read(scope).await?;
    let mut walk = Walk::resume(tenant, after, prev, BTreeMap::new());
    let walked = walk_pages(&mut tx, tenant, &mut walk, Some(head_seq)).await?;
    if walked.is_err() {
        return Ok(walked);
    }
    let last = walk.expected - 1;
    if last != head_seq {
        return Ok(Err((
            last + 1,
            format!(
                "the trail should reach seq {head_seq} but ends at {last}: events were deleted"
            ),
        )));
    }
    if walk.prev_hex.as_slice() != head.as_bytes() {
        return Ok(Err((
            head_seq,
            format!("event {head_seq} is not the recorded head of the chain"),
        )));
    }
    Ok(Ok(()))
}

/// Master-key rotation: re-signs a tenant's checkpoints with `new`. Only
/// checkpoints whose signature verifies under `old` are re-signed (those
/// already signed by `new` are skipped), so a forged checkpoint is never
/// laundered; one valid under neither stops the rotation.
pub async fn resign_checkpoints(
    store: &Store,
    scope: &TenantScope,
    old: &VerifyingKey,
    new: &SigningKey,
) -> Result<u64, StoreError> {
    let rows: Vec<(i64, String, String, String)> = {
        let mut tx = store.read(scope).await?;
        db::query_as(
            "SELECT seq, hash, signed_at, signature FROM audit_checkpoints WHERE tenant_id = $1 ORDER BY seq",
        )
        .bind(scope.id_str())
        .fetch_all(tx.conn())
        .await?
    };
    let mut resigned = Vec::new();
    for (seq, hash, signed_at, signature) in rows {
        let message = checkpoint_message(scope.id_str(), seq, &hash, &signed_at);
        let valid_under = |key: &VerifyingKey| {
            decode_signature(&signature)
                .is_some_and(|sig| key.verify(message.as_bytes(), &sig).is_ok())
        };
        if valid_under(&new.verifying_key()) {
            continue;
        }
        if !valid_under(old) {
            return Err(StoreError::Corrupt(format!(
                "tenant {}: the audit checkpoint at seq {seq} has an invalid signature; \
                 run `strongroom audit verify` — a master-key rotation does not re-sign it",
                scope.id_str()
            )));
        }
        resigned.push((seq, to_hex(&new.sign(message.as_bytes()).to_bytes())));
    }
    let count = resigned.len() as u64;
    let tenant = scope.id_str().to_owned();
    store
        .append_internal(Some(scope), move |conn| {
            Box::pin(async move {
                for (seq, signature) in resigned {
                    db::query(
                        "UPDATE audit_checkpoints SET signature = $1 WHERE tenant_id = $2 AND seq = $3",
                    )
                    .bind(signature)
                    .bind(&tenant)
                    .bind(seq)
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            })
        })
        .await?;
    Ok(count)
}

/// The outcome of walking one tenant's trail.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub tenant_id: String,
    pub ok: bool,
    /// The first sequence number covered (after the retention anchor).
    pub first_seq: i64,
    pub events_checked: i64,
    pub checkpoints_checked: i64,
    /// Where the trail stops being trustworthy, when it does.
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

/// What verification starts from: the tenant's counters and its verified
/// checkpoints.
struct Start {
    audit_seq: i64,
    head: Option<String>,
    anchor_seq: i64,
    anchor_hash: Option<String>,
}

/// Walks one tenant's events in seq order; shared by both read paths.
struct Walk {
    prev: Hash,
    /// `prev` as lower-case hex: what the next event's `prev_hash` must be.
    prev_hex: [u8; 64],
    scratch: Vec<u8>,
    expected: i64,
    checkpoints: BTreeMap<i64, String>,
    report: VerifyReport,
}

type Failure = (i64, String);

impl Walk {
    fn new(tenant: &str, start: &Start) -> Result<Walk, StoreError> {
        let prev = match start.anchor_hash.as_deref() {
            Some(hex) => {
                from_hex(hex).ok_or_else(|| StoreError::Corrupt("bad audit anchor".into()))?
            }
            None => GENESIS,
        };
        Ok(Walk {
            prev,
            prev_hex: hex_bytes(&prev),
            scratch: Vec::with_capacity(1024),
            expected: start.anchor_seq + 1,
            checkpoints: BTreeMap::new(),
            report: VerifyReport {
                tenant_id: tenant.to_owned(),
                ok: true,
                first_seq: start.anchor_seq + 1,
                events_checked: 0,
                checkpoints_checked: 0,
                first_bad_seq: None,
                problem: None,
            },
        })
    }

    /// Continues a walk after event `after`, whose hash is `prev`.
    fn resume(tenant: &str, after: i64, prev: Hash, checkpoints: BTreeMap<i64, String>) -> Walk {
        Walk {
            prev,
            prev_hex: hex_bytes(&prev),
            scratch: Vec::with_capacity(1024),
            expected: after + 1,
            checkpoints,
            report: VerifyReport {
                tenant_id: tenant.to_owned(),
                ok: true,
                first_seq: after + 1,
                events_checked: 0,
                checkpoints_checked: 0,
                first_bad_seq: None,
                problem: None,
            },
        }
    }

    /// Checks and records a checkpoint; a forged one must vouch for nothing.
    fn checkpoint(
        &mut self,
        key: &VerifyingKey,
        seq: i64,
        hash: &str,
        signed_at: &str,
        signature: &str,
    ) -> Result<(), Failure> {
        let message = checkpoint_message(&self.report.tenant_id, seq, hash, signed_at);
        let valid = decode_signature(signature)
            .is_some_and(|sig| key.verify(message.as_bytes(), &sig).is_ok());
        if !valid {
            return Err((
                seq,
                format!("the checkpoint at seq {seq} has an invalid signature"),
            ));
        }
        self.checkpoints.insert(seq, hash.to_owned());
        self.report.checkpoints_checked += 1;
        Ok(())
    }

    fn event(
        &mut self,
        event: &Chained<'_>,
        stored_prev: Option<&str>,
        stored_hash: Option<&str>,
    ) -> Result<(), Failure> {
        let (seq, expected) = (event.seq, self.expected);
        if seq != expected {
            return Err((
                expected,
                format!(
                    "event {expected} is missing: the trail jumps from {} to {seq}",
                    expected - 1
                ),
            ));
        }
        if stored_prev.map(str::as_bytes) != Some(self.prev_hex.as_slice()) {
            return Err((
                seq,
                format!(
                    "event {seq} does not follow event {}: events were deleted, inserted or reordered",
                    seq - 1
                ),
            ));
        }
        let computed = event.hash_with(&self.prev, &mut self.scratch);
        let computed_hex = hex_bytes(&computed);
        if stored_hash.map(str::as_bytes) != Some(computed_hex.as_slice()) {
            return Err((
                seq,
                format!("event {seq} was modified after it was written"),
            ));
        }
        if let Some(signed) = self.checkpoints.get(&seq)
            && Some(signed.as_str()) != stored_hash
        {
            return Err((
                seq,
                format!("event {seq} differs from its signed checkpoint: the chain was rewritten"),
            ));
        }
        self.prev = computed;
        self.prev_hex = computed_hex;
        self.expected += 1;
        self.report.events_checked += 1;
        Ok(())
    }

    /// After the last event: nothing may be missing at the end.
    fn end(&self, start: &Start) -> Result<(), Failure> {
        let last = self.expected - 1;
        if let Some((&seq, _)) = self.checkpoints.range(last + 1..).next() {
            return Err((
                last + 1,
                format!(
                    "a signed checkpoint covers seq {seq}, but the trail ends at {last}: events were deleted"
                ),
            ));
        }
        if start.audit_seq > last {
            return Err((
                last + 1,
                format!(
                    "the trail should reach seq {} but ends at {last}: events were deleted",
                    start.audit_seq
                ),
            ));
        }
        if last > start.anchor_seq
            && start.audit_seq == last
            && start.head.as_deref().map(str::as_bytes) != Some(self.prev_hex.as_slice())
        {
            return Err((
                last,
                format!("event {last} is not the recorded head of the chain"),
            ));
        }
        Ok(())
    }

    fn report(mut self, outcome: Result<(), Failure>) -> VerifyReport {
        if let Err((seq, problem)) = outcome {
            self.report.ok = false;
            self.report.first_bad_seq = Some(seq);
            self.report.problem = Some(problem);
        }
        self.report
    }
}

const START_SQL: &str = "SELECT audit_seq, audit_head, audit_anchor_seq, audit_anchor_hash \
     FROM tenant_sequences WHERE tenant_id = $1";
const CHECKPOINTS_SQL: &str = "SELECT seq, hash, signed_at, signature FROM audit_checkpoints \
     WHERE tenant_id = $1 AND seq > $2 ORDER BY seq";
const EVENT_COLUMNS: &str = "id, seq, occurred_at, action, outcome, actor_type, actor_id, actor_email, \
     ip, user_agent, request_id, app_version, target_type, target_id, changes, prev_hash, hash, \
     environment";

/// Walks `scope`'s chain and checks it against the signed checkpoints.
pub async fn verify(
    store: &Store,
    scope: &TenantScope,
    key: &VerifyingKey,
) -> Result<VerifyReport, StoreError> {
    verify_splitting_from(store, scope, key, PARALLEL_FROM, None).await
}

/// [`verify`], and against `shipped` too: the newest checkpoint kept
/// outside the database. A trail cut back together with its checkpoints
/// in the database still falls short of it.
pub async fn verify_against(
    store: &Store,
    scope: &TenantScope,
    key: &VerifyingKey,
    shipped: Option<Checkpoint>,
) -> Result<VerifyReport, StoreError> {
    verify_splitting_from(store, scope, key, PARALLEL_FROM, shipped).await
}

/// [`verify`], splitting the SQLite walk in two halves even for short
/// trails, so tests can prove the split path catches the same tampering.
#[doc(hidden)]
pub async fn verify_in_halves(
    store: &Store,
    scope: &TenantScope,
    key: &VerifyingKey,
) -> Result<VerifyReport, StoreError> {
    verify_splitting_from(store, scope, key, 2, None).await
}

async fn verify_splitting_from(
    store: &Store,
    scope: &TenantScope,
    key: &VerifyingKey,
    parallel_from: i64,
    shipped: Option<Checkpoint>,
) -> Result<VerifyReport, StoreError> {
    let shipped = shipped.filter(|c| c.tenant_id == scope.id_str());
    if let Some(path) = store.sqlite_file() {
        let (tenant, key) = (scope.id_str().to_owned(), *key);
        return tokio::task::spawn_blocking(move || {
            verify_sqlite(&path, &tenant, &key, parallel_from, shipped.as_ref())
        })
        .await
        .map_err(|_| StoreError::Corrupt("verification task failed".into()))?;
    }
    verify_paged(store, scope, key, shipped.as_ref()).await
}

/// Adds the checkpoint kept outside the database to the walk, unless the
/// database holds it (then its own copy was checked) or retention passed it.
fn add_shipped(
    walk: &mut Walk,
    key: &VerifyingKey,
    start: &Start,
    shipped: Option<&Checkpoint>,
) -> Result<(), Failure> {
    match shipped {
        Some(c) if c.seq > start.anchor_seq && !walk.checkpoints.contains_key(&c.seq) => {
            walk.checkpoint(key, c.seq, &c.hash, &c.signed_at, &c.signature)
        }
        _ => Ok(()),
    }
}

/// Below this many events one thread verifies alone.
const PARALLEL_FROM: i64 = 100_000;

fn open_read_only(path: &std::path::Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Map the file: a page read is then a memory access, not a pread()
    // and a copy (verification reads the whole trail once).
    conn.pragma_update(None, "mmap_size", 1i64 << 32)?;
    Ok(conn)
}

/// SQLite: read-only connections, columns read in place; a long trail is
/// split in two halves verified on two threads. The halves join because the
/// upper one starts from the stored hash of the lower one's last event,
/// which the lower half proves. (Through the async driver each row cost
/// ~24 µs; here it is ~1.5 µs on one core.)
fn verify_sqlite(
    path: &std::path::Path,
    tenant: &str,
    key: &VerifyingKey,
    parallel_from: i64,
    shipped: Option<&Checkpoint>,
) -> Result<VerifyReport, StoreError> {
    use rusqlite::params;
    let native = |e: rusqlite::Error| StoreError::Native(e.to_string());
    let conn = open_read_only(path).map_err(native)?;
    let tx = conn.unchecked_transaction().map_err(native)?;
    let start = tx
        .query_row(&START_SQL.replace('$', "?"), params![tenant], |r| {
            Ok(Start {
                audit_seq: r.get(0)?,
                head: r.get(1)?,
                anchor_seq: r.get(2)?,
                anchor_hash: r.get(3)?,
            })
        })
        .map_err(native)?;
    let mut walk = Walk::new(tenant, &start)?;
    let checked = (|| -> Result<Result<(), Failure>, rusqlite::Error> {
        let mut checkpoints = tx.prepare(&CHECKPOINTS_SQL.replace('$', "?"))?;
        let mut rows = checkpoints.query(params![tenant, start.anchor_seq])?;
        while let Some(r) = rows.next()? {
            let checked = walk.checkpoint(
                key,
                r.get(0)?,
                r.get_ref(1)?.as_str()?,
                r.get_ref(2)?.as_str()?,
                r.get_ref(3)?.as_str()?,
            );
            if checked.is_err() {
                return Ok(checked);
            }
        }
        Ok(Ok(()))
    })()
    .map_err(native)?;
    let checked = checked.and_then(|()| add_shipped(&mut walk, key, &start, shipped));
    if checked.is_err() {
        return Ok(walk.report(checked));
    }

    let events = start.audit_seq - start.anchor_seq;
    let mid = start.anchor_seq + events / 2;
    let upper = if events >= parallel_from {
        // The upper half, on its own connection and thread.
        let (path, tenant) = (path.to_owned(), tenant.to_owned());
        let checkpoints = walk.checkpoints.clone();
        Some(std::thread::spawn(
            move || -> Result<(Walk, Result<(), Failure>), StoreError> {
                let conn = open_read_only(&path).map_err(native)?;
                let tx = conn.unchecked_transaction().map_err(native)?;
                let joint: Option<String> = tx
                    .query_row(
                        "SELECT hash FROM audit_events WHERE tenant_id = ?1 AND seq = ?2",
                        params![tenant, mid],
                        |r| r.get(0),
                    )
                    .map_err(native)
                    .ok()
                    .flatten();
                let Some(prev) = joint.as_deref().and_then(from_hex) else {
                    // The lower half reports what is wrong at `mid`.
                    let walk = Walk::resume(&tenant, mid, GENESIS, checkpoints);
                    return Ok((walk, Err((mid, "broken at the halfway point".into()))));
                };
                let mut walk = Walk::resume(&tenant, mid, prev, checkpoints);
                let outcome = walk_rows(&tx, &tenant, &mut walk, mid, None).map_err(native)?;
                Ok((walk, outcome))
            },
        ))
    } else {
        None
    };
    let lower_end = upper.as_ref().map(|_| mid);
    let outcome = walk_rows(&tx, tenant, &mut walk, start.anchor_seq, lower_end).map_err(native)?;
    if let Some(upper) = upper {
        let (upper_walk, upper_outcome) = upper
            .join()
            .map_err(|_| StoreError::Corrupt("verification thread failed".into()))??;
        if outcome.is_err() {
            return Ok(walk.report(outcome));
        }
        // The lower half must have reached `mid` exactly.
        if walk.expected != mid + 1 {
            let missing = walk.expected;
            return Ok(walk.report(Err((missing, format!("event {missing} is missing")))));
        }
        let events_checked = walk.report.events_checked;
        let mut upper_walk = upper_walk;
        upper_walk.report.events_checked += events_checked;
        upper_walk.report.checkpoints_checked = walk.report.checkpoints_checked;
        upper_walk.report.first_seq = walk.report.first_seq;
        let outcome = upper_outcome.and_then(|()| upper_walk.end(&start));
        return Ok(upper_walk.report(outcome));
    }
    let outcome = outcome.and_then(|()| walk.end(&start));
    Ok(walk.report(outcome))
}

/// Feeds events `after < seq <= until` to `walk`.
fn walk_rows(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    walk: &mut Walk,
    after: i64,
    until: Option<i64>,
) -> Result<Result<(), Failure>, rusqlite::Error> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM audit_events WHERE tenant_id = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq"
    );
    let mut events = tx.prepare(&sql)?;
    let mut rows = events.query(rusqlite::params![tenant, after, until.unwrap_or(i64::MAX)])?;
    while let Some(r) = rows.next()? {
        let required = |i| text(r, i).map(Option::unwrap_or_default);
        let event = Chained {
            id: required(0)?,
            tenant_id: tenant,
            seq: r.get(1)?,
            occurred_at: required(2)?,
            action: required(3)?,
            outcome: required(4)?,
            actor_type: required(5)?,
            actor_id: text(r, 6)?,
            actor_email: text(r, 7)?,
            ip: text(r, 8)?,
            user_agent: text(r, 9)?,
            request_id: required(10)?,
            app_version: required(11)?,
            target_type: text(r, 12)?,
            target_id: text(r, 13)?,
            changes: text(r, 14)?,
            environment: text(r, 17)?,
        };
        let stepped = walk.event(&event, text(r, 15)?, text(r, 16)?);
        if stepped.is_err() {
            return Ok(stepped);
        }
    }
    Ok(Ok(()))
}

/// A text column read in place (no copy).
fn text<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> Result<Option<&'r str>, rusqlite::Error> {
    Ok(row.get_ref(i)?.as_str_or_null()?)
}

/// PostgreSQL: pages of events aggregated into one string each.
async fn verify_paged(
    store: &Store,
    scope: &TenantScope,
    key: &VerifyingKey,
    shipped: Option<&Checkpoint>,
) -> Result<VerifyReport, StoreError> {
    let tenant = scope.id_str();
    let mut tx = store.read(scope).await?;
    let row = db::query(START_SQL)
        .bind(tenant)
        .fetch_one(tx.conn())
        .await?;
    let start = Start {
        audit_seq: row.try_get(0)?,
        head: row.try_get(1)?,
        anchor_seq: row.try_get(2)?,
        anchor_hash: row.try_get(3)?,
    };
    let mut walk = Walk::new(tenant, &start)?;
    let rows = db::query(CHECKPOINTS_SQL)
        .bind(tenant)
        .bind(start.anchor_seq)
        .fetch_all(tx.conn())
        .await?;
    for row in &rows {
        let (hash, signed_at, signature): (String, String, String) =
            (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let checked = walk.checkpoint(key, row.try_get(0)?, &hash, &signed_at, &signature);
        if checked.is_err() {
            return Ok(walk.report(checked));
        }
    }
    let checked = add_shipped(&mut walk, key, &start, shipped);
    if checked.is_err() {
        return Ok(walk.report(checked));
    }
    let walked = walk_pages(&mut tx, tenant, &mut walk, None).await?;
    if walked.is_err() {
        return Ok(walk.report(walked));
    }
    let end = walk.end(&start);
    Ok(walk.report(end))
}

/// Events per verification page (PostgreSQL).
const VERIFY_PAGE: i64 = 4096;

/// A page of events as one JSON array of arrays, built by the database in
/// C (`json_array` / `json_build_array`), in seq order.
/// Steps `walk` through the tenant's events after its position, a page at
/// a time, up to `until` if given (else to the last event).
async fn walk_pages(
    tx: &mut crate::store::ReadTx,
    tenant: &str,
    walk: &mut Walk,
    until: Option<i64>,
) -> Result<Result<(), Failure>, StoreError> {
    let page_sql = page_query(tx.backend());
    loop {
        let row = db::query(&page_sql)
            .bind(tenant)
            .bind(walk.expected - 1)
            .bind(VERIFY_PAGE)
            .fetch_one(tx.conn())
            .await?;
        let page: Option<String> = row.try_get(0)?;
        let Some(page) = page else {
            return Ok(Ok(()));
        };
        let rows: Vec<PageRow<'_>> = serde_json::from_str(&page)
            .map_err(|e| StoreError::Corrupt(format!("malformed audit page: {e}")))?;
        for row in &rows {
            if until.is_some_and(|until| row.1 > until) {
                return Ok(Ok(()));
            }
            let event = Chained {
                id: &row.0,
                tenant_id: tenant,
                seq: row.1,
                occurred_at: &row.2,
                action: &row.3,
                outcome: &row.4,
                actor_type: &row.5,
                actor_id: row.6.as_deref(),
                actor_email: row.7.as_deref(),
                ip: row.8.as_deref(),
                user_agent: row.9.as_deref(),
                request_id: &row.10,
                app_version: &row.11,
                target_type: row.12.as_deref(),
                target_id: row.13.as_deref(),
                changes: row.14.as_deref(),
                environment: row.17.as_deref(),
            };
            let stepped = walk.event(&event, row.15.as_deref(), row.16.as_deref());
            if stepped.is_err() {
                return Ok(stepped);
            }
        }
    }
}

fn page_query(backend: crate::store::Backend) -> String {
    use crate::store::Backend;
    // SQLite's group_concat follows the order of the (ordered) subquery;
    // PostgreSQL's string_agg is told explicitly. Either way a wrong order
    // could only raise a false alarm (seq is checked), never hide tampering.
    let (row, aggregate) = match backend {
        Backend::Sqlite => (
            format!("json_array({EVENT_COLUMNS})"),
            "group_concat(enc, ',')",
        ),
        // The time as the chain hashed it (`clock::format`); JSON's own
        // rendering of a timestamptz would end in +00:00.
        Backend::Postgres => (
            format!(
                "json_build_array({})::text",
                EVENT_COLUMNS.replacen(
                    "occurred_at",
                    "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                    1
                )
            ),
            "string_agg(enc, ',' ORDER BY seq)",
        ),
    };
    format!(
        "SELECT '[' || {aggregate} || ']' FROM (SELECT seq, {row} AS enc FROM audit_events \
         WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) AS page"
    )
}

/// One event of a page, borrowed from the page text where possible.
#[derive(serde::Deserialize)]
struct PageRow<'a>(
    #[serde(borrow)] Cow<'a, str>,
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
);

fn decode_signature(hex: &str) -> Option<Signature> {
    if hex.len() != 128 {
        return None;
    }
    let (a, b) = hex.split_at(64);
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&chain::from_hex(a)?);
    bytes[32..].copy_from_slice(&chain::from_hex(b)?);
    Some(Signature::from_bytes(&bytes))
}
