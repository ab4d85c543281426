//! `strongroom bench backup` (BAK-1, BAK-4): against the real HTTP server
//! on a fresh SQLite instance with a local backup target, in one run:
//!
//! * create throughput with the shipper running vs paused (closed loop,
//!   alternating rounds), the target being ≥ 0.9×;
//! * shipping lag under an open-loop create load at half the measured
//!   capacity: the journal's counter is sampled every 10 ms and each sample
//!   is matched with the first shipping pass that covered it (p50, p99;
//!   target p99 ≤ 1 s);
//! * the restore of one tenant holding `restore_mb` of rows and files into
//!   a new instance from the target alone, as MB/s beside `cp -r` + `sync`
//!   of the target directory on the same disk (target: RTO ≤ 30 s per GB).
//!
//! Prints a table and the JSON it writes to `bench/results/backup.json`
//! (when run from the checkout; `bench/backup` does).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::backup::{BackupTarget, restore, ship, snapshot};
use crate::config::Config;

const PASSWORD: &str = "violet-harbour-tractor-92";

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body)?);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    let bytes = res.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn du(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                total += du(&p);
            } else if let Ok(meta) = entry.metadata() {
                total += meta.len();
            }
        }
    }
    total
}

pub async fn backup(
    seconds: u64,
    rounds: usize,
    concurrency: usize,
    restore_mb: u64,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = std::env::temp_dir().join(format!(
        "strongroom-bench-backup-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let dir = work.join("data");
    let backups = work.join("backups");
    let config = Config {
        data_dir: dir.clone(),
        backup_url: Some(format!("file://{}", backups.display())),
        requests_per_second_per_ip: 1_000_000,
        requests_per_second_per_user: 1_000_000,
        requests_per_second_per_tenant: 1_000_000,
        max_connections_per_ip: concurrency * 8,
        ..Config::default()
    };
    let state = crate::open(config).await?;
    let target = Arc::new(BackupTarget::open(&state.config).map_err(anyhow::Error::msg)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::http::run(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .build()?;
    let created = crate::tenancy::create(
        &state.store,
        &state.post(),
        "bench",
        "Bench",
        "admin@bench.test",
        72,
    )
    .await
    .context("bench tenant")?;
    let (_, session) = post(
        &client,
        &format!("{base}/api/v1/auth/invitations/accept"),
        None,
        &json!({"token": created.invitation_token, "password": PASSWORD}),
    )
    .await?;
    let token = session["access_token"]
        .as_str()
        .context("admin session")?
        .to_owned();
    let (status, _) = post(
        &client,
        &format!("{base}/api/v1/collections"),
        Some(&token),
        &json!({"name": "work_orders", "fields": [
            {"name": "title", "type": "text", "required": true},
            {"name": "notes", "type": "text", "sensitive": true},
            {"name": "blob", "type": "file", "max_size": 1_073_741_824u64, "max_files": 100}]}),
    )
    .await?;
    anyhow::ensure!(status == 201, "collection: {status}");
    let scope = crate::tenancy::find_active_by_slug(&state.store, "bench")
        .await?
        .context("tenant")?;

    // The shipper, in passes this bench can pause, each pass's reach noted.
    let shipper = ship::Shipper::new(
        state.store.clone(),
        state.vault.clone(),
        state.objects.clone(),
        target.clone(),
        Duration::from_secs(60),
    );
    let shipping = Arc::new(AtomicBool::new(false));
    let passes: Arc<std::sync::Mutex<Vec<(Instant, i64)>>> = Arc::default();
    let tenant = scope.id_str().to_owned();
    let pass_loop = {
        let (shipping, passes, target, tenant) = (
            shipping.clone(),
            passes.clone(),
            target.clone(),
            tenant.clone(),
        );
        tokio::spawn(async move {
            loop {
                if shipping.load(Ordering::SeqCst) {
                    let _ = shipper.pass().await;
                    if let Ok(Some(head)) = ship::head(&target, &tenant).await
                        && let Ok(mut passes) = passes.lock()
                    {
                        passes.push((Instant::now(), head.last));
                    }
                }
                tokio::time::sleep(ship::PASS_EVERY).await;
            }
        })
    };
    let counter = {
        let store = state.store.clone();
        let scope = scope.clone();
        move || {
            let (store, scope) = (store.clone(), scope.clone());
            async move {
                let mut tx = store.read_each(&scope).await?;
                let seq: i64 = crate::store::db::query_scalar(
                    "SELECT journal_seq FROM tenant_sequences WHERE tenant_id = $1",
                )
                .bind(scope.id_str())
                .fetch_one(tx.conn())
                .await?;
                anyhow::Ok(seq)
            }
        }
    };

    // 1. Throughput, shipping paused vs running, alternating.
    let made = Arc::new(AtomicUsize::new(0));
    let closed_loop = |seconds: u64| {
        let (client, base, token, made) =
            (client.clone(), base.clone(), token.clone(), made.clone());
        async move {
            let started = Instant::now();
            let done = Arc::new(AtomicUsize::new(0));
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (client, base, token, made, done) = (
                    client.clone(),
                    base.clone(),
                    token.clone(),
                    made.clone(),
                    done.clone(),
                );
                workers.spawn(async move {
                    while started.elapsed() < Duration::from_secs(seconds) {
                        let i = made.fetch_add(1, Ordering::SeqCst);
                        let body = json!({"title": format!("order {i}"), "notes": format!("sealed note {i}")});
                        if let Ok((201, _)) = post(&client, &format!("{base}/api/v1/collections/work_orders/records"), Some(&token), &body).await {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
            while workers.join_next().await.is_some() {}
            done.load(Ordering::SeqCst) as f64 / started.elapsed().as_secs_f64()
        }
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        shipping.store(false, Ordering::SeqCst);
        off.push(closed_loop(seconds).await);
        shipping.store(true, Ordering::SeqCst);
        on.push(closed_loop(seconds).await);
        eprintln!(
            "round {}: {:.0} creates/s shipping paused, {:.0} shipping",
            round + 1,
            off[round],
            on[round]
        );
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let capacity = median(&off);

    // 2. Lag at half the capacity, open loop.
    let rate = (capacity / 2.0).max(1.0);
    if let Ok(mut p) = passes.lock() {
        p.clear();
    }
    let samples: Arc<std::sync::Mutex<Vec<(Instant, i64)>>> = Arc::default();
    let sampler = {
        let (samples, counter) = (samples.clone(), counter.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(seq) = counter().await
                    && let Ok(mut s) = samples.lock()
                {
                    s.push((Instant::now(), seq));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let started = Instant::now();
    let mut sent = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        sent.spawn(async move {
            let body = json!({"title": format!("paced {n}"), "notes": "sealed"});
            let _ = post(
                &client,
                &format!("{base}/api/v1/collections/work_orders/records"),
                Some(&token),
                &body,
            )
            .await;
        });
        n += 1;
    }
    while sent.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampler.abort();
    let (samples, passes_seen) = (
        samples.lock().map(|s| s.clone()).unwrap_or_default(),
        passes.lock().map(|p| p.clone()).unwrap_or_default(),
    );
    let mut lags: Vec<f64> = Vec::new();
    let mut previous = i64::MIN;
    for (at, seq) in samples
        .iter()
        .filter(|(at, _)| *at <= started + Duration::from_secs(seconds))
    {
        if *seq == previous {
            continue; // the first sample at each seq: when it was committed, within 10 ms
        }
        previous = *seq;
        if let Some((shipped, _)) = passes_seen
            .iter()
            .find(|(t, last)| t >= at && *last >= *seq)
        {
            lags.push(shipped.duration_since(*at).as_secs_f64());
        }
    }
    lags.sort_by(f64::total_cmp);

    // 3. Restore of a tenant holding `restore_mb` of rows and files.
    shipping.store(false, Ordering::SeqCst);
    let file_mb = restore_mb * 9 / 10;
    let piece = 64u64.min(file_mb.max(1));
    let (_, record) = post(
        &client,
        &format!("{base}/api/v1/collections/work_orders/records"),
        Some(&token),
        &json!({"title": "files"}),
    )
    .await?;
    let record = record["id"].as_str().context("record")?.to_owned();
    let mut uploaded = 0u64;
    let mut chunk = vec![0u8; (piece * 1024 * 1024) as usize];
    while uploaded < file_mb {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = (i as u64)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(uploaded) as u8;
        }
        chunk[..8].copy_from_slice(b"%PDF-1.7");
        let boundary = "strongroom-bench-boundary";
        let mut body = format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"blob.pdf\"\r\ncontent-type: application/pdf\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&chunk);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let res = client
            .post(format!(
                "{base}/api/v1/collections/work_orders/records/{record}/files/blob"
            ))
            .header("authorization", format!("Bearer {token}"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 201, "upload: {}", res.status());
        uploaded += piece;
    }
    // Rows of about 4 KB until the rest of the size.
    let row_mb = restore_mb - file_mb;
    let rows = (row_mb * 1024 / 4) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, base, token, next) =
            (client.clone(), base.clone(), token.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= rows {
                    return;
                }
                let body = json!({"title": format!("bulk {i} {}", "x".repeat(2000)), "notes": "y".repeat(2000)});
                let _ = post(&client, &format!("{base}/api/v1/collections/work_orders/records"), Some(&token), &body).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    snapshot::take(&state.store, &state.vault, &target, &scope)
        .await
        .map_err(anyhow::Error::msg)?;
    shipping.store(true, Ordering::SeqCst);
    let wanted = counter().await?;
    let waited = Instant::now();
    while ship::head(&target, &tenant)
        .await
        .map_err(anyhow::Error::msg)?
        .map_or(0, |h| h.last)
        < wanted
    {
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(600),
            "shipping did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shipping.store(false, Ordering::SeqCst);
    let target_bytes = du(&backups);

    // The peer: copying the target's directory on the same disk, durably.
    let copy = work.join("copy");
    let t0 = Instant::now();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&backups)
        .arg(&copy)
        .status()?;
    anyhow::ensure!(status.success(), "cp -r failed");
    let _ = std::process::Command::new("sync").status();
    let cp_seconds = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&copy);

    let fresh_dir = work.join("restored");
    crate::create_private_dir(&fresh_dir)?;
    std::fs::copy(
        dir.join(crate::crypto::KEY_FILE),
        fresh_dir.join(crate::crypto::KEY_FILE),
    )?;
    let fresh = crate::open(Config {
        data_dir: fresh_dir.clone(),
        backup: false,
        ..Config::default()
    })
    .await?;
    let t0 = Instant::now();
    let restored = restore::restore_tenant(
        &fresh.store,
        &fresh.vault,
        &fresh.objects,
        &target,
        &tenant,
        &restore::Point::Latest,
        restore::Mode::Fresh,
        &crate::context::RequestMeta::default(),
        &|_, _| {},
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let _ = std::process::Command::new("sync").status();
    let restore_seconds = t0.elapsed().as_secs_f64();
    fresh.store.close().await;
    let restored_bytes = du(&fresh_dir);

    pass_loop.abort();
    let _ = stop.send(());
    let _ = server.await;
    state.store.close().await;
    let _ = std::fs::remove_dir_all(&work);

    let mb = target_bytes as f64 / 1_048_576.0;
    let result = json!({
        "command": format!("strongroom bench backup --seconds {seconds} --rounds {rounds} --concurrency {concurrency} --restore-mb {restore_mb}"),
        "date": crate::clock::now(),
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "creates_per_s_shipping_paused": off,
        "creates_per_s_shipping": on,
        "shipping_vs_paused": median(&on) / median(&off),
        "lag_load_creates_per_s": rate,
        "lag_samples": lags.len(),
        "lag_p50_s": percentile(&lags, 0.5),
        "lag_p99_s": percentile(&lags, 0.99),
        "lag_max_s": lags.last().copied().unwrap_or(0.0),
        "restore_tenant_target_mb": mb,
        "restore_rows": restored.rows,
        "restore_entries_replayed": restored.entries_replayed,
        "restored_instance_mb": restored_bytes as f64 / 1_048_576.0,
        "restore_seconds": restore_seconds,
        "restore_mb_per_s": mb / restore_seconds,
        "restore_seconds_per_gb": restore_seconds / (mb / 1024.0),
        "cp_r_sync_seconds": cp_seconds,
        "cp_r_sync_mb_per_s": mb / cp_seconds,
        "restore_vs_cp": cp_seconds / restore_seconds,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    if std::path::Path::new("bench/results").is_dir() {
        std::fs::write(
            "bench/results/backup.json",
            format!("{}\n", serde_json::to_string_pretty(&result)?),
        )?;
    }
    Ok(())
}
