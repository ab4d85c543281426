//! `strongroom bench login-mfa`: logins with a TOTP second step (two
//! calls each: the password, then the code) against the real HTTP server
//! on a fresh SQLite instance, beside the hash-bound limit measured in the
//! same run (cores / time of one Argon2id hash). Every login uses a user
//! of its own, because a TOTP step is accepted once per factor. With
//! `known_devices` each user logged in once during set-up and presents
//! that device's token (a returning user); without, every timed login is a
//! first login from a new device (registered and audited). Beside the
//! rate it reports where the timed part's CPU went, by thread kind, and
//! how many durable commits and writer jobs a login took.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::config::Config;
use crate::identity::totp;

const PASSWORD: &str = "violet-harbour-tractor-92";

async fn call(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body)?);
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

/// Decodes what `totp::base32` encoded.
fn unbase32(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => continue,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

struct Enrolled {
    email: String,
    secret: Vec<u8>,
    confirmed_step: i64,
    device: Option<String>,
}

pub async fn login_mfa(
    users: usize,
    seconds: u64,
    concurrency: usize,
    known_devices: bool,
    second_step: bool,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!(
        "strongroom-bench-login-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let config = Config {
        data_dir: dir.clone(),
        access_log: true,
        // Thousands of logins from one address, on purpose.
        login_attempts_per_minute_per_ip: 1_000_000,
        login_attempts_per_minute_per_account: 1_000_000,
        requests_per_second_per_ip: 1_000_000,
        requests_per_second_per_user: 1_000_000,
        requests_per_second_per_tenant: 1_000_000,
        // The set-up's connections and the timed part's, from one address.
        max_connections_per_ip: concurrency * 8,
        ..Config::default()
    };
    let state = crate::open(config).await?;
    crate::identity::warm_up();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::http::run(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .build()?;

    // Set-up: a tenant, its admin, and `users` members each with a
    // confirmed TOTP factor.
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
    let (_, admin) = call(
        &client,
        format!("{base}/api/v1/auth/invitations/accept"),
        None,
        json!({"token": created.invitation_token, "password": PASSWORD}),
    )
    .await?;
    let refresh = admin["refresh_token"]
        .as_str()
        .context("admin session")?
        .to_owned();
    let admin = Arc::new(tokio::sync::RwLock::new(
        admin["access_token"]
            .as_str()
            .context("admin session")?
            .to_owned(),
    ));
    // Access tokens live 60 s and a large set-up takes longer: the admin's
    // is refreshed every 30 s until the set-up is done.
    let refresher = {
        let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
        tokio::spawn(async move {
            let mut refresh = refresh;
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let Ok((_, pair)) = call(
                    &client,
                    format!("{base}/api/v1/auth/refresh"),
                    None,
                    json!({ "refresh_token": refresh }),
                )
                .await
                else {
                    continue;
                };
                if let (Some(access), Some(next)) = (
                    pair["access_token"].as_str(),
                    pair["refresh_token"].as_str(),
                ) {
                    *admin.write().await = access.to_owned();
                    refresh = next.to_owned();
                }
            }
        })
    };
    let set_up = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, base, admin, next) =
            (client.clone(), base.clone(), admin.clone(), next.clone());
        workers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= users {
                    return Ok::<_, anyhow::Error>(mine);
                }
                let email = format!("user{i}@bench.test");
                let token = admin.read().await.clone();
                let (status, invited) = call(
                    &client,
                    format!("{base}/api/v1/users"),
                    Some(&token),
                    json!({"email": email, "role": "member"}),
                )
                .await?;
                anyhow::ensure!(
                    status == 201,
                    "inviting a user answered {status}: {invited}"
                );
                let (_, session) = call(
                    &client,
                    format!("{base}/api/v1/auth/invitations/accept"),
                    None,
                    json!({"token": invited["invitation_token"], "password": PASSWORD}),
                )
                .await?;
                let mut access = session["access_token"]
                    .as_str()
                    .with_context(|| format!("accepting an invitation answered {session}"))?
                    .to_owned();
                let mut device = None;
                if known_devices {
                    // A first login from this device, before the factor.
                    let (_, first) = call(
                        &client,
                        format!("{base}/api/v1/auth/login"),
                        None,
                        json!({"tenant": "bench", "email": email, "password": PASSWORD}),
                    )
                    .await?;
                    access = first["access_token"]
                        .as_str()
                        .context("logged in")?
                        .to_owned();
                    device = first["device_token"].as_str().map(str::to_owned);
                }
                if !second_step {
                    mine.push(Enrolled {
                        email,
                        secret: Vec::new(),
                        confirmed_step: 0,
                        device,
                    });
                    continue;
                }
                let (_, started) = call(
                    &client,
                    format!("{base}/api/v1/auth/mfa/factors"),
                    Some(&access),
                    json!({"kind": "totp"}),
                )
                .await?;
                let secret = unbase32(started["secret"].as_str().context("a TOTP secret")?);
                let step = totp::step_at(crate::clock::unix_now());
                let (status, _) = call(
                    &client,
                    format!(
                        "{base}/api/v1/auth/mfa/factors/{}/confirm",
                        started["factor_id"].as_str().unwrap_or_default()
                    ),
                    Some(&access),
                    json!({"code": totp::code(&secret, step)}),
                )
                .await?;
                anyhow::ensure!(status == 200, "confirming a factor answered {status}");
                mine.push(Enrolled {
                    email,
                    secret,
                    confirmed_step: step,
                    device,
                });
            }
        });
    }
    let mut enrolled = Vec::new();
    while let Some(done) = workers.join_next().await {
        enrolled.extend(done??);
    }
    refresher.abort();
    let set_up = set_up.elapsed();

    // The hash-bound limit, measured now on the same machine: one hash at
    // a time (its time per hash), and one per core at once (what the cores
    // together hash a second: the limit a login cannot pass).
    let password = secrecy::SecretString::from(PASSWORD.to_owned());
    let hashes = 20u32;
    let timer = Instant::now();
    for _ in 0..hashes {
        crate::identity::hash_password(password.clone()).await?;
    }
    let per_hash = timer.elapsed().as_secs_f64() / f64::from(hashes);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Measured before and again after the timed part (this machine's
    // speed drifts by some percent over a minute), and averaged.
    let limit_before = parallel_hash_rate(&password, hashes * 3, cores).await?;

    // The timed part: each login is its own user's, two calls.
    let enrolled = Arc::new(enrolled);
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_before = cpu_by_thread();
    let commits_before = commits();
    // For a profiler to attach to the timed part only.
    eprintln!(
        "bench: set-up done in {:.1} s, timed part starts",
        set_up.as_secs_f64()
    );
    // The timed part's clients run on a thread of their own, with a client
    // of their own (its connections' tasks live where they were opened),
    // so that what the load costs is told apart from what the server does.
    let load = Load(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-client")
            .enable_all()
            .build()?,
    ));
    let client = load
        .handle()
        .spawn(async move {
            reqwest::Client::builder()
                .pool_max_idle_per_host(concurrency * 2)
                .build()
        })
        .await??;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, base, enrolled, next) =
            (client.clone(), base.clone(), enrolled.clone(), next.clone());
        workers.spawn_on(
            async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(user) = enrolled.get(i) else { break };
                    let (_, first) = call(
                    &client,
                    format!("{base}/api/v1/auth/login"),
                    None,
                    match &user.device {
                        Some(device) => json!({"tenant": "bench", "email": user.email,
                                               "password": PASSWORD, "device_token": device}),
                        None => {
                            json!({"tenant": "bench", "email": user.email, "password": PASSWORD})
                        }
                    },
                )
                .await?;
                    if !second_step {
                        if first["access_token"].is_string() {
                            ok += 1;
                        } else {
                            failed += 1;
                        }
                        continue;
                    }
                    let step = totp::step_at(crate::clock::unix_now()).max(user.confirmed_step + 1);
                    let (status, _) = call(
                        &client,
                        format!("{base}/api/v1/auth/mfa/verify"),
                        None,
                        json!({"mfa_token": first["mfa_token"], "method": "totp",
                           "code": totp::code(&user.secret, step)}),
                    )
                    .await?;
                    if status == 200 {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                Ok::<_, anyhow::Error>((ok, failed))
            },
            load.handle(),
        );
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(done) = workers.join_next().await {
        let (o, f) = done??;
        ok += o;
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let busy: std::collections::BTreeMap<String, f64> = cpu_by_thread()
        .into_iter()
        .map(|(name, ticks)| {
            let spent = ticks - cpu_before.get(&name).copied().unwrap_or(0.0);
            (name, spent / elapsed)
        })
        .collect();
    drop(load);
    let rate = ok as f64 / elapsed;
    let (commits_after, jobs_after) = commits();
    let (commits, jobs) = (
        commits_after - commits_before.0,
        jobs_after - commits_before.1,
    );
    let limit_after = parallel_hash_rate(&password, hashes * 3, cores).await?;
    let limit = (limit_before + limit_after) / 2.0;
    // The cores the load generator took were not the server's to hash on:
    // the limit on what is left, for the server's share alone.
    let client_cores = busy.get("bench-client").copied().unwrap_or(0.0);
    let server_limit = limit * (1.0 - client_cores / cores as f64);
    println!(
        "{}",
        json!({
            "benchmark": "login-mfa",
            "second_step": second_step,
            "calls_per_login": if second_step { 2 } else { 1 },
            "known_devices": known_devices,
            "users_enrolled": enrolled.len(),
            "set_up_seconds": set_up.as_secs_f64(),
            "concurrency": concurrency,
            "seconds": elapsed,
            "logins": ok,
            "failed": failed,
            "users_ran_out": ok + failed >= enrolled.len() as u64,
            "logins_per_second": rate,
            "ms_per_hash": per_hash * 1000.0,
            "cores": cores,
            "cores_over_ms_per_hash": cores as f64 / per_hash,
            "hash_bound_logins_per_second": limit,
            "hash_bound_before_and_after": [limit_before, limit_after],
            "share_of_hash_bound_limit": rate / limit,
            "share_of_hash_bound_limit_left_by_the_client": rate / server_limit,
            "cores_busy_by_thread": busy,
            "commits_per_login": commits / ok.max(1) as f64,
            "writes_per_login": jobs / ok.max(1) as f64,
        })
    );
    let _ = stop.send(());
    let _ = server.await;
    state.store.close().await;
    let _ = std::fs::remove_dir_all(dir);
    anyhow::ensure!(failed == 0, "{failed} logins failed");
    Ok(())
}

/// Argon2id hashes a second with one hash per core at once, `per_core`
/// each: what the cores together hash, the limit a login cannot pass.
async fn parallel_hash_rate(
    password: &secrecy::SecretString,
    per_core: u32,
    cores: usize,
) -> anyhow::Result<f64> {
    let timer = Instant::now();
    let mut hashing = tokio::task::JoinSet::new();
    for _ in 0..cores {
        let password = password.clone();
        hashing.spawn(async move {
            for _ in 0..per_core {
                crate::identity::hash_password(password.clone()).await?;
            }
            Ok::<_, crate::identity::IdentityError>(())
        });
    }
    while let Some(done) = hashing.join_next().await {
        done??;
    }
    Ok(f64::from(per_core) * cores as f64 / timer.elapsed().as_secs_f64())
}

/// CPU seconds each kind of thread of this process has used (threads
/// named alike, as `argon2-0` and `argon2-1`, summed under `argon2`), from
/// `/proc/self/task/*/stat`: where a timed part's cores went. Empty where
/// there is no `/proc`.
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    // The kernel reports CPU time in USER_HZ ticks, 100 a second on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    let mut spent = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return spent;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "pid (name) state ppid …": the name may hold spaces, the fields
        // after its closing parenthesis do not; utime and stime are the
        // 14th and 15th fields of the line.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *spent.entry(name.to_owned()).or_insert(0.0) += (ticks(11) + ticks(12)) / TICKS_PER_SECOND;
    }
    spent
}

/// Group commits so far and the writes they held, from the metrics.
fn commits() -> (f64, f64) {
    let text = crate::metrics::get().encode();
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("strongroom_write_batch_jobs_count"),
        value("strongroom_write_batch_jobs_sum"),
    )
}

/// The load generator's runtime, shut down without waiting wherever it is
/// dropped (a runtime may not be dropped plainly inside another).
struct Load(Option<tokio::runtime::Runtime>);

impl Load {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime is there until dropped")
            .handle()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
