//! `strongroom bench …`: in-process measurements that need no load
//! generator. (HTTP throughput is measured over real HTTP by the scripts
//! in `bench/`.)

use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::audit::chain::{Chained, GENESIS, to_hex};
use crate::config::Config;
use crate::store::db;

/// A typical record update by a user, as the chain hashes it.
fn sample_event<'a>(
    tenant_id: &'a str,
    id: &'a str,
    seq: i64,
    occurred_at: &'a str,
    request_id: &'a str,
    target_id: &'a str,
    changes: &'a str,
) -> Chained<'a> {
    Chained {
        id,
        tenant_id,
        seq,
        occurred_at,
        action: "record.update",
        outcome: "success",
        actor_type: "user",
        actor_id: Some("bench-user"),
        actor_email: Some("bench@bench.test"),
        ip: Some("10.1.2.3"),
        user_agent: Some("bench/1.0"),
        request_id,
        app_version: crate::VERSION,
        target_type: Some("record"),
        target_id: Some(target_id),
        changes: Some(changes),
        environment: Some("test"),
    }
}

/// Builds a genuine chain of `events` audit events for one tenant in a
/// throwaway SQLite database, then times `audit::verify` over it.
pub async fn audit_verify(events: i64, rounds: u32) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "strongroom-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let config = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    let state = crate::open(config).await?;
    let created = crate::tenancy::create(
        &state.store,
        &state.post(),
        "bench",
        "Bench",
        "bench@bench.test",
        72,
    )
    .await
    .context("bench tenant")?;
    let scope = crate::tenancy::find_active_by_slug(&state.store, "bench")
        .await?
        .context("bench tenant")?;

    // Generate the chain after the tenant's own first event.
    let started = Instant::now();
    let tenant = created.tenant_id.clone();
    let mut prev = {
        let mut tx = state.store.read(&scope).await?;
        let head: Option<String> =
            db::query_scalar("SELECT audit_head FROM tenant_sequences WHERE tenant_id = $1")
                .bind(&tenant)
                .fetch_one(tx.conn())
                .await?;
        head.and_then(|h| crate::audit::chain::from_hex(&h))
            .unwrap_or(GENESIS)
    };
    let first = 2i64;
    let mut seq = first;
    let changes = json!({"before": {"status": "open"}, "after": {"status": "done"}}).to_string();
    while seq < first + events {
        let batch_end = (seq + 10_000).min(first + events);
        let mut rows = Vec::with_capacity((batch_end - seq) as usize);
        for n in seq..batch_end {
            let id = uuid::Uuid::now_v7().to_string();
            let request_id = uuid::Uuid::now_v7().to_string();
            let occurred_at = crate::clock::now();
            let target_id = format!("rec-{n}");
            let hash = sample_event(
                &tenant,
                &id,
                n,
                &occurred_at,
                &request_id,
                &target_id,
                &changes,
            )
            .hash(&prev);
            rows.push((
                id,
                n,
                occurred_at,
                request_id,
                target_id,
                to_hex(&prev),
                to_hex(&hash),
            ));
            prev = hash;
        }
        let (tenant, changes) = (tenant.clone(), changes.clone());
        state
            .store
            .append_internal(Some(&scope), move |conn| {
                Box::pin(async move {
                    for (id, n, at, request_id, target_id, prev_hash, hash) in &rows {
                        db::query(
                            "INSERT INTO audit_events (id, tenant_id, seq, occurred_at, action, outcome, actor_type, \
                             actor_id, actor_email, ip, user_agent, request_id, app_version, target_type, target_id, \
                             changes, prev_hash, hash, environment) VALUES ($1, $2, $3, $4, 'record.update', 'success', \
                             'user', 'bench-user', 'bench@bench.test', '10.1.2.3', 'bench/1.0', $5, $6, 'record', $7, $8, \
                             $9, $10, 'test')",
                        )
                        .bind(id)
                        .bind(&tenant)
                        .bind(*n)
                        .bind(at)
                        .bind(request_id)
                        .bind(crate::VERSION)
                        .bind(target_id)
                        .bind(&changes)
                        .bind(prev_hash)
                        .bind(hash)
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .await?;
        seq = batch_end;
    }
    let last = first + events - 1;
    let head = to_hex(&prev);
    let tenant_id = tenant.clone();
    state
        .store
        .append_internal(Some(&scope), move |conn| {
            Box::pin(async move {
                db::query("UPDATE tenant_sequences SET audit_seq = $1, audit_head = $2 WHERE tenant_id = $3")
                    .bind(last)
                    .bind(&head)
                    .bind(&tenant_id)
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .await?;
    eprintln!(
        "generated {events} chained events in {:.1?}",
        started.elapsed()
    );

    let key = state.keyring.checkpoint_signing_key().verifying_key();
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        let report = crate::audit::verify(&state.store, &scope, &key).await?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(report.ok, "the generated chain did not verify: {report:?}");
        best = best.min(seconds);
    }
    // Hashing alone, to show what the database read costs on top.
    let started = Instant::now();
    let mut h = GENESIS;
    for n in 0..events {
        h = sample_event(
            &tenant,
            "0190f0a4-7c1e-7000-8000-000000000001",
            n,
            "2026-11-21T12:00:00.000000Z",
            "0190f0a4-7c1e-7000-8000-000000000002",
            "rec-1",
            &changes,
        )
        .hash(&h);
    }
    let hashing = started.elapsed().as_secs_f64();
    let total = events + 1;
    let result = json!({
        "benchmark": "audit-verify",
        "backend": "sqlite",
        "events": total,
        "verify_seconds_best": best,
        "verify_events_per_second": (total as f64 / best).round(),
        "hash_only_events_per_second": (events as f64 / hashing).round(),
        "target_events_per_second": 1_000_000,
        "last_hash": to_hex(&h),
    });
    println!("{result}");
    state.store.close().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Times `count` sequential Argon2id hashes with the production parameters.
pub async fn password_hash(count: u32) -> anyhow::Result<()> {
    let password = secrecy::SecretString::from("violet-harbour-tractor-92".to_owned());
    // One untimed hash warms up allocator and caches.
    crate::identity::hash_password(password.clone()).await?;
    let started = Instant::now();
    for _ in 0..count {
        crate::identity::hash_password(password.clone()).await?;
    }
    let per_hash = started.elapsed().as_secs_f64() / f64::from(count);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{}",
        json!({
            "benchmark": "password-hash",
            "algorithm": "argon2id m=19456 t=2 p=1",
            "ms_per_hash": per_hash * 1000.0,
            "cores": cores,
            "hash_bound_logins_per_second": cores as f64 / per_hash,
        })
    );
    Ok(())
}

/// Times the file path's two per-byte costs on one core, over `mb` MiB in
/// memory, through the same code the server runs (best of three).
pub fn file_crypto(mb: usize) {
    use sha2::{Digest, Sha256};
    let data = vec![0x5a_u8; mb * 1024 * 1024];
    let piece = 4 * 1024 * 1024;
    let best = |work: &dyn Fn()| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                work();
                started.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let sha = best(&|| {
        let mut sha = Sha256::new();
        data.chunks(piece).for_each(|p| sha.update(p));
        std::hint::black_box(sha.finalize());
    });
    let seal = best(&|| {
        let key = crate::crypto::aead::DataKey::new(&crate::crypto::aead::generate_key());
        let mut sealer = crate::crypto::stream::Sealer::new(key);
        for p in data.chunks(piece) {
            sealer.push(p);
            std::hint::black_box(sealer.take_sealed(piece));
        }
        std::hint::black_box(sealer.finish());
    });
    let rate = |seconds: f64| (mb as f64 / seconds * 10.0).round() / 10.0;
    println!(
        "{}",
        json!({
            "benchmark": "file-crypto",
            "mb": mb,
            "sha256_mb_s": rate(sha),
            "seal_aes_256_gcm_mb_s": rate(seal),
        })
    );
}
