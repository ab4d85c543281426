//! Live checks that read the stored data itself (POS-1): raw values and
//! objects sampled for ciphertext (ENC-2), stored hashes against the
//! password policy (IAM-1), every tenant table's foreign key and orphan
//! rows (TEN-1), the journal's sequence (BAK-1, BAK-7), the files' upload
//! events and types (FIL-3, FIL-4), exports re-read (AUD-4), and the
//! object stores written and read back (FIL-1, ENC-4).

use futures_util::StreamExt;

use super::finding::{Finding, Probe, Reach, Verdict, finding};
use crate::context::TenantScope;
use crate::store::{Backend, StoreError, db};

/// How many of the newest records per collection, and objects per tenant,
/// the ENC-2 check reads raw.
const SAMPLE: i64 = 20;

/// Each tenant's files looked at once (the table, and the newest objects
/// read raw), for ENC-2, FIL-3 and FIL-4 alike.
pub async fn sample_files(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
) -> Result<Vec<crate::files::FileSample>, StoreError> {
    let mut samples = Vec::with_capacity(scopes.len());
    for scope in scopes {
        samples.push(
            probe
                .files
                .sample(scope, SAMPLE)
                .await
                .map_err(|e| match e {
                    crate::files::FileError::Store(e) => e,
                    other => StoreError::Corrupt(other.to_string()),
                })?,
        );
    }
    Ok(samples)
}

/// ENC-2: for sampled rows of collections with encrypted fields, the raw
/// stored value is ciphertext that opens only with the tenant's key in its
/// place; sampled objects' raw bytes authenticate under their file keys.
pub async fn sealed_at_rest(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
    files: &[crate::files::FileSample],
) -> Finding {
    let mut problems = Vec::new();
    let (mut collections, mut records, mut values, mut objects, mut locked) = (0, 0, 0, 0, 0);
    for scope in scopes {
        let sampled = async {
            let mut tx = probe.store.read(scope).await.map_err(|e| e.to_string())?;
            let backend = tx.backend();
            crate::records::sealed::sample(probe.vault, tx.conn(), backend, scope.id_str(), SAMPLE)
                .await
                .map_err(|e| e.to_string())
        };
        match sampled.await {
            Ok(sample) => {
                collections += sample.collections;
                records += sample.records;
                values += sample.values;
                locked += sample.locked;
                problems.extend(sample.problems);
            }
            Err(e) => problems.push(format!("tenant {}: {e}", scope.id_str())),
        }
    }
    for sample in files {
        objects += sample.sealed;
        locked += sample.locked;
        problems.extend(sample.problems.iter().cloned());
    }
    if !problems.is_empty() {
        problems.truncate(10);
        return finding("ENC-2", Verdict::Fail, problems.join("; "));
    }
    finding(
        "ENC-2",
        Verdict::Pass,
        format!(
            "read raw from {}: {values} values of encrypted fields in {records} records of \
             {collections} collections are AES-256-GCM ciphertext that opens with the tenant's \
             key in its own place, and {objects} stored objects authenticate chunk by chunk \
             under their file keys{}",
            reach.tenants(scopes.len()),
            if locked > 0 {
                format!("; {locked} could not be opened: their keys are revoked or destroyed")
            } else {
                String::new()
            }
        ),
    )
}

/// FIL-3 and FIL-4 from the files table: every file the trail still covers
/// has its upload event, and no stored type is active content.
pub fn file_records(samples: &[crate::files::FileSample], reach: Reach) -> [Finding; 2] {
    let (mut files, mut unaudited, mut active) = (0, 0, Vec::new());
    for sample in samples {
        files += sample.files;
        unaudited += sample.unaudited;
        active.extend(sample.active.iter().cloned());
    }
    let who = reach.tenants(samples.len());
    let audited = if unaudited == 0 {
        finding(
            "FIL-3",
            Verdict::Pass,
            format!(
                "each of the {files} files of {who} uploaded within the trail's retention has \
                 its file.upload event; downloads, links and deletions are audited as they happen"
            ),
        )
    } else {
        finding(
            "FIL-3",
            Verdict::Fail,
            format!("{unaudited} of the {files} files of {who} have no upload event in the trail"),
        )
    };
    active.sort();
    active.dedup();
    let types = if active.is_empty() {
        finding(
            "FIL-4",
            Verdict::Pass,
            format!(
                "the {files} stored files of {who} are all of types sniffed from their bytes and \
                 allowed; none is active content (HTML, SVG, XML)"
            ),
        )
    } else {
        finding(
            "FIL-4",
            Verdict::Fail,
            format!("stored files of active types: {}", active.join(", ")),
        )
    };
    [audited, types]
}

/// IAM-1: every stored password hash is Argon2id with at least the
/// parameters new ones get.
pub async fn password_hashes(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
) -> Result<Finding, StoreError> {
    let (mut hashes, mut weak) = (0, Vec::new());
    for scope in scopes {
        let mut tx = probe.store.read(scope).await?;
        let rows = db::query(
            "SELECT id, password_hash FROM users WHERE tenant_id = $1 AND password_hash IS NOT NULL",
        )
        .bind(scope.id_str())
        .fetch_all(tx.conn())
        .await?;
        for row in rows {
            let (id, hash): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            hashes += 1;
            if !crate::identity::password::meets_policy(&hash) {
                weak.push(format!("user {id}"));
            }
        }
    }
    Ok(if weak.is_empty() {
        finding(
            "IAM-1",
            Verdict::Pass,
            format!(
                "the {hashes} stored password hashes of {} are all Argon2id with m ≥ 19 MiB, \
                 t ≥ 2, p ≥ 1; new passwords need 12–256 characters and zxcvbn score ≥ 3",
                reach.tenants(scopes.len())
            ),
        )
    } else {
        weak.truncate(10);
        finding(
            "IAM-1",
            Verdict::Fail,
            format!(
                "password hashes below the policy (not Argon2id m=19456 t=2): {}",
                weak.join(", ")
            ),
        )
    })
}

/// The tables that hold a tenant's rows, as the database describes them.
async fn tenant_tables(probe: &Probe<'_>) -> Result<Vec<(String, bool)>, StoreError> {
    let mut tx = probe.store.read_unscoped().await?;
    Ok(match probe.store.backend() {
        Backend::Postgres => {
            // pg_catalog, not information_schema: the latter shows only
            // constraints of tables the current role owns.
            let rows = db::query(
                "SELECT c.relname, CAST(EXISTS (SELECT 1 FROM pg_constraint k \
                 JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey) \
                 WHERE k.conrelid = c.oid AND k.contype = 'f' AND a.attname = 'tenant_id' \
                 AND k.confrelid = (SELECT t.oid FROM pg_class t WHERE t.relname = 'tenants' \
                 AND t.relnamespace = c.relnamespace)) AS int) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND EXISTS \
                 (SELECT 1 FROM pg_attribute t WHERE t.attrelid = c.oid AND t.attname = 'tenant_id' \
                  AND NOT t.attisdropped) ORDER BY c.relname",
            )
            .fetch_all(tx.conn())
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? != 0)))
                .collect::<Result<_, db::Error>>()?
        }
        Backend::Sqlite => {
            let tables: Vec<String> = db::query_scalar(
                "SELECT m.name FROM sqlite_master m WHERE m.type = 'table' AND EXISTS \
                 (SELECT 1 FROM pragma_table_info(m.name) p WHERE p.name = 'tenant_id') \
                 ORDER BY m.name",
            )
            .fetch_all(tx.conn())
            .await?;
            let mut out = Vec::new();
            for table in tables {
                let keyed: i64 = db::query_scalar(
                    "SELECT COUNT(*) FROM pragma_foreign_key_list($1) \
                     WHERE \"from\" = 'tenant_id' AND \"table\" = 'tenants'",
                )
                .bind(&table)
                .fetch_one(tx.conn())
                .await?;
                out.push((table, keyed > 0));
            }
            out
        }
    })
}

/// Tables whose tenant rows are kept on purpose after the tenant row (they
/// have no foreign key by design): the access log keeps anonymous rows,
/// tombstones outlive their files, the erasure log outlives the tenant it
/// erased (BAK-4), and the rate and ban tables have none.
const UNKEYED_BY_DESIGN: &[&str] = &["access_log", "file_tombstones", "erasures"];

/// TEN-1: every table holding tenant rows names its tenant by a foreign key
/// to `tenants`, and no row of the tenant points anywhere else.
pub async fn tenant_keys(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
) -> Result<Finding, StoreError> {
    let tables = tenant_tables(probe).await?;
    let loose: Vec<&str> = tables
        .iter()
        .filter(|(table, keyed)| !keyed && !UNKEYED_BY_DESIGN.contains(&table.as_str()))
        .map(|(table, _)| table.as_str())
        .collect();
    if !loose.is_empty() {
        return Ok(finding(
            "TEN-1",
            Verdict::Fail,
            format!(
                "tables with tenant rows but no foreign key to tenants: {}",
                loose.join(", ")
            ),
        ));
    }
    // Each tenant's rows are found by its id; the scope is the only way in.
    let mut rows = 0i64;
    for scope in scopes {
        let mut tx = probe.store.read(scope).await?;
        for (table, _) in tables.iter().filter(|(_, keyed)| *keyed) {
            let n: i64 =
                db::query_scalar(format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = $1"))
                    .bind(scope.id_str())
                    .fetch_one(tx.conn())
                    .await?;
            rows += n;
        }
    }
    Ok(finding(
        "TEN-1",
        Verdict::Pass,
        format!(
            "{} tables hold tenant rows, each naming its tenant by a foreign key to tenants \
             ({} by design without: {}); {rows} rows of {} read through the tenant scope",
            tables.len(),
            UNKEYED_BY_DESIGN.len(),
            UNKEYED_BY_DESIGN.join(", "),
            reach.tenants(scopes.len())
        ),
    ))
}

/// BAK-1 and BAK-7: every tenant's journal is gap-free up to its counter
/// (no acknowledged write missing from it), every record has its journal
/// entry, and the database commits durably.
pub async fn journal(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
) -> Result<[Finding; 2], StoreError> {
    let (mut entries, mut gaps) = (0i64, Vec::new());
    for scope in scopes {
        let mut tx = probe.store.read(scope).await?;
        let row = db::query(
            "SELECT (SELECT COUNT(*) FROM journal WHERE tenant_id = $1), \
             (SELECT COALESCE(MAX(seq), 0) FROM journal WHERE tenant_id = $1), \
             (SELECT COALESCE(MAX(journal_seq), 0) FROM tenant_sequences WHERE tenant_id = $1), \
             (SELECT COUNT(*) FROM records r WHERE r.tenant_id = $1 AND NOT EXISTS \
              (SELECT 1 FROM journal j WHERE j.tenant_id = $1 AND j.entity = 'record' \
               AND j.entity_id = CAST(r.id AS TEXT)))",
        )
        .bind(scope.id_str())
        .fetch_one(tx.conn())
        .await?;
        let (count, max, counter, unjournaled): (i64, i64, i64, i64) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        entries += count;
        if count != max || max != counter {
            gaps.push(format!(
                "tenant {}: {count} entries, highest seq {max}, counter {counter}",
                scope.id_str()
            ));
        }
        if unjournaled > 0 {
            gaps.push(format!(
                "tenant {}: {unjournaled} records without a journal entry",
                scope.id_str()
            ));
        }
    }
    let who = reach.tenants(scopes.len());
    let journaled = if gaps.is_empty() {
        finding(
            "BAK-1",
            Verdict::Pass,
            format!(
                "the journal of {who} is gap-free: {entries} after-images, each tenant's highest \
                 sequence equal to its count and counter, every record journaled (not yet \
                 shipped to a second location)"
            ),
        )
    } else {
        finding("BAK-1", Verdict::Fail, gaps.join("; "))
    };
    let mut tx = probe.store.read_unscoped().await?;
    let durable = match probe.store.backend() {
        Backend::Sqlite => {
            let sync: i64 = db::query_scalar("PRAGMA synchronous")
                .fetch_one(tx.conn())
                .await?;
            let mode: String = db::query_scalar("PRAGMA journal_mode")
                .fetch_one(tx.conn())
                .await?;
            (sync >= 2 && mode.eq_ignore_ascii_case("wal"))
                .then(|| "SQLite in WAL mode with synchronous=FULL".to_owned())
                .ok_or(format!("SQLite journal_mode={mode}, synchronous={sync}"))
        }
        Backend::Postgres => {
            let fsync: String = db::query_scalar("SELECT current_setting('fsync')")
                .fetch_one(tx.conn())
                .await?;
            let commit: String = db::query_scalar("SELECT current_setting('synchronous_commit')")
                .fetch_one(tx.conn())
                .await?;
            (fsync == "on" && commit != "off")
                .then(|| format!("PostgreSQL with fsync on, synchronous_commit {commit}"))
                .ok_or(format!(
                    "PostgreSQL fsync={fsync}, synchronous_commit={commit}"
                ))
        }
    };
    // Whether this process answers to a service manager that restarts it.
    let supervised = match crate::ops::supervise::Notifier::from_env() {
        Some(n) if n.watchdog().is_some() => {
            "; this process runs under a service manager with a watchdog"
        }
        Some(_) => "; this process runs under a service manager (no watchdog asked)",
        None => {
            "; this process was not started by a service manager (deploy/strongroom.service \
             restarts the server on exit and on a missed watchdog)"
        }
    };
    let recovered = match (durable, gaps.is_empty()) {
        (Ok(how), true) => finding(
            "BAK-7",
            Verdict::Pass,
            format!(
                "{how}: a write is acknowledged only after a durable commit, and no \
                 acknowledged write is missing by the journal's count{supervised}"
            ),
        ),
        (Ok(how), false) => finding(
            "BAK-7",
            Verdict::Fail,
            format!("{how}, but the journal has gaps: {}", gaps.join("; ")),
        ),
        (Err(setting), _) => finding(
            "BAK-7",
            Verdict::Fail,
            format!("commits are not durable: {setting}"),
        ),
    };
    Ok([journaled, recovered])
}

/// AUD-4: the last day of each tenant's trail, exported as JSON Lines
/// through the export path, holds every event counted there.
pub async fn exports(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
) -> Result<Finding, StoreError> {
    let since = crate::clock::in_seconds(-86_400);
    let (mut counted, mut exported, mut short) = (0i64, 0i64, Vec::new());
    for scope in scopes {
        let n: i64 = {
            let mut tx = probe.store.read(scope).await?;
            db::query_scalar(
                "SELECT COUNT(*) FROM audit_events WHERE tenant_id = $1 AND occurred_at >= $2",
            )
            .bind(scope.id_str())
            .bind(&since)
            .fetch_one(tx.conn())
            .await?
        };
        let filter = crate::audit::AuditFilter {
            from: Some(since.clone()),
            ..Default::default()
        };
        let mut stream = std::pin::pin!(crate::audit::export::audit_stream(
            probe.store.clone(),
            crate::context::Permit::system(scope.clone(), "posture"),
            filter,
            crate::audit::export::Format::Jsonl,
        ));
        let mut lines = 0i64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => lines += chunk.iter().filter(|&&b| b == b'\n').count() as i64,
                Err(e) => {
                    short.push(format!(
                        "tenant {}: the export broke off: {e}",
                        scope.id_str()
                    ));
                    break;
                }
            }
        }
        counted += n;
        exported += lines;
        // Events written meanwhile may add lines, never take them away.
        if lines < n {
            short.push(format!(
                "tenant {}: {n} events in the last day, {lines} exported",
                scope.id_str()
            ));
        }
    }
    Ok(if short.is_empty() {
        finding(
            "AUD-4",
            Verdict::Pass,
            format!(
                "the last day of the trail of {} exported now as JSON Lines: {exported} lines for \
                 {counted} events counted; filters and CSV share the same paged reader",
                reach.tenants(scopes.len())
            ),
        )
    } else {
        finding("AUD-4", Verdict::Fail, short.join("; "))
    })
}

/// FIL-1 and ENC-4: every object store is written through the sealing
/// writer, read back raw and found to hold only ciphertext.
pub async fn object_stores(probe: &Probe<'_>, reach: Reach) -> [Finding; 2] {
    // A tenant is told the kind of each store, not where it lives.
    let stores: Vec<String> = probe
        .files
        .objects
        .targets()
        .iter()
        .map(|t| match reach {
            Reach::Instance => format!("{} {}", t.role, t.describe),
            Reach::Tenant => format!(
                "{} ({})",
                t.role,
                t.describe.split("://").next().unwrap_or("?")
            ),
        })
        .collect();
    match probe.files.objects.self_test().await {
        Ok(()) => [
            finding(
                "FIL-1",
                Verdict::Pass,
                format!("written and read back now: {}", stores.join(", ")),
            ),
            finding(
                "ENC-4",
                Verdict::Pass,
                format!(
                    "a canary written now through the upload writer is ciphertext in the raw \
                     bytes of every store ({}), and opens back",
                    stores.join(", ")
                ),
            ),
        ],
        Err(why) => [
            finding("FIL-1", Verdict::Fail, why.clone()),
            finding("ENC-4", Verdict::Fail, why),
        ],
    }
}

/// FIL-2: a link signed now with the instance's key is accepted, and the
/// same link altered, for another tenant, or expired is refused.
pub fn signed_links(probe: &Probe<'_>) -> Finding {
    use crate::files::signed::{self, Grant, MAX_TTL_SECONDS};
    let key = probe.keyring.url_signing_key();
    let now = crate::clock::unix_now();
    let grant = Grant {
        tenant: "posture-probe".into(),
        file: uuid::Uuid::now_v7().to_string(),
        by: "posture".into(),
        expires: now + MAX_TTL_SECONDS,
    };
    let link = signed::link(key, &grant);
    let signature = link.rsplit("signature=").next().unwrap_or_default();
    let other = Grant {
        tenant: "another-tenant".into(),
        ..grant.clone()
    };
    let mut flipped = signature.to_owned();
    let last = if flipped.ends_with('0') { "1" } else { "0" };
    flipped.replace_range(flipped.len() - 1.., last);
    let outcomes = [
        signed::check(key, &grant, signature, now).is_ok(),
        signed::check(key, &grant, &flipped, now).is_err(),
        signed::check(key, &other, signature, now).is_err(),
        signed::check(key, &grant, signature, grant.expires + 1).is_err(),
    ];
    if outcomes.iter().all(|&ok| ok) {
        finding(
            "FIL-2",
            Verdict::Pass,
            format!(
                "a link signed now opens; altered, for another tenant, or after its {MAX_TTL_SECONDS} s \
                 it is refused; other downloads need the tenant's token"
            ),
        )
    } else {
        finding(
            "FIL-2",
            Verdict::Fail,
            format!(
                "signed links misbehave (accepted, altered, other tenant, expired): {outcomes:?}"
            ),
        )
    }
}
