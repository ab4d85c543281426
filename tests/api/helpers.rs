//! `spawn_app()`: the real server on 127.0.0.1:0 with a fresh database —
//! a temporary SQLite file, or a fresh PostgreSQL database when
//! `STRONGROOM_TEST_PG_URL` names a server (the test script starts one).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection, Row};
use strongroom::config::Config;
use strongroom::http::AppState;
use strongroom::tenancy::CreatedTenant;

pub const PASSWORD: &str = "violet-harbour-tractor-92";

/// Serialises PostgreSQL database creation and first migrations: roles are
/// cluster-wide, and concurrent `CREATE ROLE`s race.
static PG_SETUP: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub database_url: String,
    pub data_dir: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub user_id: String,
    pub tenant_id: String,
    pub email: String,
}

/// The server's HTTP client stack has no default TLS provider (ring is
/// installed at start); a test building a client first installs it too.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn http_client() -> reqwest::Client {
    install_tls_provider();
    reqwest::Client::new()
}

pub fn is_postgres() -> bool {
    std::env::var("STRONGROOM_TEST_PG_URL").is_ok()
}

pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "strongroom-{label}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh, empty database URL for the backend under test.
pub async fn fresh_database(data_dir: &std::path::Path) -> String {
    match std::env::var("STRONGROOM_TEST_PG_URL") {
        Ok(admin_url) => {
            sqlx::any::install_default_drivers();
            let name = format!("sr_{}", uuid::Uuid::new_v4().simple());
            let mut conn = AnyConnection::connect(&admin_url)
                .await
                .expect("connect to test PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            let (base, _) = admin_url
                .rsplit_once('/')
                .expect("a PostgreSQL URL ends with /dbname");
            format!("{base}/{name}")
        }
        Err(_) => format!("sqlite://{}/strongroom.db", data_dir.display()),
    }
}

/// Files go to a fresh prefix of the test S3 server when
/// `STRONGROOM_TEST_S3_ENDPOINT` names one, else to the data dir.
pub fn test_config(data_dir: &std::path::Path, database_url: &str) -> Config {
    let s3 = std::env::var("STRONGROOM_TEST_S3_ENDPOINT").ok();
    Config {
        data_dir: data_dir.to_owned(),
        database_url: Some(SecretString::from(database_url.to_owned())),
        environment: strongroom::config::Environment::Test,
        database_max_connections: 8,
        // As for server processes (`UNLIMITED`): abuse.rs sets them low.
        requests_per_second_per_user: 1_000_000,
        requests_per_second_per_ip: 1_000_000,
        requests_per_second_per_tenant: 1_000_000,
        ban_after_strikes: 1_000_000,
        object_store_url: s3.as_ref().map(|endpoint| {
            format!(
                "s3://strongroom-test/{}?endpoint={endpoint}&region=us-east-1",
                uuid::Uuid::new_v4().simple()
            )
        }),
        object_store_access_key_id: s3.as_ref().map(|_| "test".to_owned()),
        object_store_secret_access_key: s3.as_ref().map(|_| SecretString::from("test")),
        // Backups are shipped by the tests of backups (backups.rs), which
        // turn them on with a target of their own.
        backup: false,
        // The test command names the advisory database cargo audit reads.
        advisory_db: std::env::var_os("STRONGROOM_ADVISORY_DB").map(PathBuf::from),
        ..Config::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// `spawn_app` with a changed configuration.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = temp_dir("app");
    let database_url = fresh_database(&data_dir).await;
    let mut config = test_config(&data_dir, &database_url);
    configure(&mut config);
    serve(config, data_dir, database_url).await
}

impl TestApp {
    /// A second app server on this one's database, data dir and object
    /// stores: another node of the same instance, with its own writer.
    pub async fn second_node(&self) -> TestApp {
        serve(
            (*self.state.config).clone(),
            self.data_dir.clone(),
            self.database_url.clone(),
        )
        .await
    }
}

async fn serve(config: Config, data_dir: PathBuf, database_url: String) -> TestApp {
    let state = {
        let _guard = if is_postgres() {
            Some(PG_SETUP.lock().await)
        } else {
            None
        };
        strongroom::open(config).await.expect("server state opens")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(strongroom::http::run(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: {
            install_tls_provider();
            reqwest::Client::builder()
                .user_agent("strongroom-tests/1")
                .build()
                .unwrap()
        },
        state,
        database_url,
        data_dir,
        shutdown: Some(shutdown),
    }
}

impl TestApp {
    /// Stops the in-process server and closes its database pools (what an
    /// operator does before an offline command); the data dir stays.
    pub async fn stop_server(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.state.access_log.flush().await;
        self.state.store.close().await;
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.address, path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    /// A GET's JSON body.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        self.get(path, token)
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    /// The served OpenAPI document: the route registry.
    pub async fn openapi(&self) -> Value {
        self.client
            .get(format!("{}/openapi.json", self.address))
            .send()
            .await
            .expect("openapi.json")
            .json()
            .await
            .expect("a JSON document")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Response {
        self.request(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// Creates a tenant the way the CLI does.
    pub async fn create_tenant(&self, slug: &str) -> CreatedTenant {
        strongroom::tenancy::create(
            &self.state.store,
            &self.state.post(),
            slug,
            &format!("{slug} Ltd"),
            &format!("admin@{slug}.test"),
            72,
        )
        .await
        .expect("tenant created")
    }

    pub async fn accept(&self, token: &str, email: &str, tenant_id: &str) -> Session {
        let res = self
            .post(
                "/api/v1/auth/invitations/accept",
                None,
                json!({"token": token, "password": PASSWORD}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK, "accepting an invitation");
        let body: Value = res.json().await.unwrap();
        let access_token = body["access_token"].as_str().unwrap().to_owned();
        let me: Value = self
            .get("/api/v1/me", &access_token)
            .await
            .json()
            .await
            .unwrap();
        Session {
            access_token,
            refresh_token: body["refresh_token"].as_str().unwrap().to_owned(),
            user_id: me["user"]["id"].as_str().unwrap().to_owned(),
            tenant_id: tenant_id.to_owned(),
            email: email.to_owned(),
        }
    }

    /// A new tenant and its logged-in first admin.
    pub async fn admin(&self, slug: &str) -> Session {
        let created = self.create_tenant(slug).await;
        self.accept(
            created.invitation_token.as_deref().unwrap(),
            &created.admin_email,
            &created.tenant_id,
        )
        .await
    }

    /// Invites a user with `role` and logs them in.
    pub async fn user(&self, admin: &Session, email: &str, role: &str) -> Session {
        let res = self
            .post(
                "/api/v1/users",
                Some(&admin.access_token),
                json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        self.accept(
            body["invitation_token"].as_str().unwrap(),
            email,
            &admin.tenant_id,
        )
        .await
    }

    pub async fn work_orders(&self, admin: &Session) {
        let res = self
            .post(
                "/api/v1/collections",
                Some(&admin.access_token),
                json!({"name": "work_orders", "fields": [
                    {"name": "title", "type": "text", "required": true},
                    {"name": "status", "type": "select", "options": ["open", "done"], "indexed": true},
                    {"name": "priority", "type": "integer"},
                    {"name": "code", "type": "text", "unique": true},
                    {"name": "notes", "type": "text", "sensitive": true}
                ]}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }

    pub async fn create_order(&self, session: &Session, body: Value) -> Value {
        let res = self
            .post(
                "/api/v1/collections/work_orders/records",
                Some(&session.access_token),
                body,
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    /// A connection that bypasses the application (and, on PostgreSQL,
    /// row-level security: it is the superuser) — what an attacker or an
    /// operator with database access would have.
    pub async fn raw(&self) -> AnyConnection {
        sqlx::any::install_default_drivers();
        AnyConnection::connect(&self.database_url).await.unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let mut conn = self.raw().await;
        let n: i64 = sqlx::query(sql)
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        n
    }

    /// The access log as the API shows it, after flushing pending rows.
    pub async fn access_log(&self, token: &str, query: &str) -> Vec<Value> {
        self.state.access_log.flush().await;
        let res = self
            .get(&format!("/api/v1/access-log?limit=500{query}"), token)
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        body["items"].as_array().unwrap().clone()
    }

    /// The environment that points a CLI or server process at this app's
    /// object stores.
    pub fn store_env(&self) -> Vec<(&'static str, String)> {
        let config = &self.state.config;
        let mut vars = Vec::new();
        let settings = [
            ("STRONGROOM_OBJECT_STORE_URL", &config.object_store_url),
            (
                "STRONGROOM_OBJECT_STORE_REPLICA_URL",
                &config.object_store_replica_url,
            ),
            (
                "STRONGROOM_OBJECT_STORE_ACCESS_KEY_ID",
                &config.object_store_access_key_id,
            ),
            ("STRONGROOM_BACKUP_URL", &config.backup_url),
            (
                "STRONGROOM_BACKUP_ACCESS_KEY_ID",
                &config.backup_access_key_id,
            ),
        ];
        for (name, value) in settings {
            if let Some(value) = value {
                vars.push((name, value.clone()));
            }
        }
        if config.object_store_secret_access_key.is_some() {
            vars.push((
                "STRONGROOM_OBJECT_STORE_SECRET_ACCESS_KEY",
                "test".to_owned(),
            ));
        }
        vars.push(("STRONGROOM_BACKUP", config.backup.to_string()));
        if config.backup_secret_access_key.is_some() {
            vars.push(("STRONGROOM_BACKUP_SECRET_ACCESS_KEY", "test".to_owned()));
        }
        vars
    }

    /// The CLI on this app's database and object stores. The in-process
    /// server's buffered access log is written first: on SQLite, a CLI
    /// write whose snapshot goes stale under a concurrent commit fails with
    /// "database is locked" (see the closing note of session 2).
    pub async fn cli(&self) -> Command {
        self.state.access_log.flush().await;
        let mut cmd = cli(&self.data_dir, &self.database_url);
        cmd.envs(self.store_env());
        cmd
    }

    /// Runs the CLI with `args` on this app's stores; it must succeed.
    /// Returns what it printed.
    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli().await.args(args).run().await.unwrap();
        assert!(
            out.status.success(),
            "strongroom {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI with `args` on this app's stores; it must fail.
    /// Returns what it printed.
    pub async fn cli_fails(&self, args: &[&str]) -> String {
        let out = self.cli().await.args(args).run().await.unwrap();
        assert!(
            !out.status.success(),
            "strongroom {} succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every object in one store (0 primary, 1 replica): key and raw bytes.
    pub async fn objects(&self, store: usize) -> Vec<(String, Vec<u8>)> {
        let target = &self.state.objects.targets()[store];
        let mut out = Vec::new();
        for key in target.list_keys().await.unwrap() {
            let bytes = target.raw_bytes(&key).await.unwrap();
            out.push((key, bytes.to_vec()));
        }
        out
    }

    /// Every file under the primary store's directory when it is local,
    /// staging files of unfinished uploads included (which listings skip);
    /// empty for S3.
    pub fn local_store_files(&self) -> Vec<std::path::PathBuf> {
        let describe = &self.state.objects.targets()[0].describe;
        let Some(dir) = describe.strip_prefix("file://") else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let mut pending = vec![std::path::PathBuf::from(dir)];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }

    /// Uploads `bytes` as a multipart part named "file".
    pub async fn upload(
        &self,
        token: &str,
        path: &str,
        file_name: &str,
        claimed_type: &str,
        bytes: &[u8],
    ) -> Response {
        let (content_type, body) = multipart(file_name, claimed_type, bytes);
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("upload sent")
    }

    /// A new operator account in `role`, invited at the console, its
    /// invitation accepted, its second factor confirmed and logged in:
    /// the session's bearer token (ACC-3).
    pub async fn operator(&self, role: &str) -> String {
        self.operator_account(role).await.0
    }

    /// [`TestApp::operator`], with the account's e-mail address.
    pub async fn operator_account(&self, role: &str) -> (String, String) {
        let email = format!("{role}-{}@ops.test", uuid::Uuid::new_v4().simple());
        let (_, invitation) = strongroom::operators::create(&self.state.store, &email, role)
            .await
            .expect("operator created");
        let accepted: Value = self
            .post(
                "/api/v1/ops/auth/accept",
                None,
                json!({"token": invitation, "password": PASSWORD}),
            )
            .await
            .json()
            .await
            .unwrap();
        let secret = base32_decode(accepted["totp_secret"].as_str().unwrap());
        let restricted = accepted["token"].as_str().unwrap().to_owned();
        let res = self
            .post(
                "/api/v1/ops/auth/mfa/confirm",
                Some(&restricted),
                json!({"code": totp_code(&secret, 0)}),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::NO_CONTENT,
            "confirming the factor"
        );
        // The next step's code: the current one is spent.
        let res = self
            .post(
                "/api/v1/ops/auth/login",
                None,
                json!({"email": email, "password": PASSWORD, "code": totp_code(&secret, 1)}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK, "operator login");
        let body: Value = res.json().await.unwrap();
        (body["token"].as_str().unwrap().to_owned(), email)
    }

    /// One `operator`-role session per app, made on first use.
    pub async fn ops_token(&self) -> String {
        static TOKENS: LazyLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
            LazyLock::new(Default::default);
        if let Some(token) = TOKENS.lock().unwrap().get(&self.address) {
            return token.clone();
        }
        let token = self.operator("operator").await;
        TOKENS
            .lock()
            .unwrap()
            .insert(self.address.clone(), token.clone());
        token
    }

    pub async fn audit(&self, admin: &Session) -> Vec<Value> {
        let body: Value = self
            .get("/api/v1/audit?limit=500", &admin.access_token)
            .await
            .json()
            .await
            .unwrap();
        body["items"].as_array().unwrap().clone()
    }
}

/// Everything the database holds, as an attacker with the files (SQLite:
/// the database file and its WAL) or a superuser (PostgreSQL: every row of
/// every table as text) would see it.
pub async fn database_dump(data_dir: &std::path::Path, url: &str) -> String {
    let mut database = Vec::new();
    if is_postgres() {
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(tables.len() >= 15, "{tables:?}");
        for table in tables {
            let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
            database.extend(rows.join("\n").into_bytes());
        }
    } else {
        for file in ["strongroom.db", "strongroom.db-wal"] {
            if let Ok(bytes) = std::fs::read(data_dir.join(file)) {
                database.extend(bytes);
            }
        }
    }
    String::from_utf8_lossy(&database).into_owned()
}

/// Asserts a problem+json response and returns its body.
pub async fn problem(res: Response, status: StatusCode) -> Value {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().await.unwrap();
    for key in ["type", "title", "status", "detail", "request_id"] {
        assert!(body.get(key).is_some(), "problem without {key}: {body}");
    }
    body
}

/// Sends `request`; the status and the body (JSON, or the text as a string).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A multipart/form-data body with one `file` part; returns its content
/// type (with the boundary) and the body.
pub fn multipart(file_name: &str, claimed_type: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("sr-{}", uuid::Uuid::new_v4().simple());
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
         Content-Type: {claimed_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// SQL that reads a stored time column as the application stores it
/// (`clock::format`): SQLite keeps that text, PostgreSQL a timestamptz.
pub fn stored_time(column: &str) -> String {
    if is_postgres() {
        format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    } else {
        column.to_owned()
    }
}

/// The `strongroom` binary running `serve` as a child process.
pub struct ServerProcess {
    pub child: Child,
    pub address: String,
    pub log: PathBuf,
}

pub fn cli(data_dir: &std::path::Path, database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strongroom"));
    cmd.env("STRONGROOM_DATA_DIR", data_dir)
        .env("STRONGROOM_DATABASE_URL", database_url)
        .env_remove("STRONGROOM_LISTEN")
        // Backups are shipped where a test asks for them (store_env).
        .env("STRONGROOM_BACKUP", "false");
    // Load tests fire bursts: the request limits and bans are proved by
    // tests of their own (abuse.rs), which set them low.
    for (key, value) in UNLIMITED {
        cmd.env(key, value);
    }
    cmd
}

/// Request limits and ban thresholds no test reaches by accident.
const UNLIMITED: [(&str, &str); 4] = [
    ("STRONGROOM_REQUESTS_PER_SECOND_PER_USER", "1000000"),
    ("STRONGROOM_REQUESTS_PER_SECOND_PER_IP", "1000000"),
    ("STRONGROOM_REQUESTS_PER_SECOND_PER_TENANT", "1000000"),
    ("STRONGROOM_BAN_AFTER_STRIKES", "1000000"),
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ServerProcess {
    pub async fn start(
        data_dir: &std::path::Path,
        database_url: &str,
        log_level: &str,
    ) -> ServerProcess {
        Self::start_with_env(data_dir, database_url, log_level, &[]).await
    }

    pub async fn start_with_env(
        data_dir: &std::path::Path,
        database_url: &str,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        Self::start_with_args(data_dir, database_url, log_level, env, &[]).await
    }

    /// [`ServerProcess::start_with_env`] with more arguments to `serve`.
    pub async fn start_with_args(
        data_dir: &std::path::Path,
        database_url: &str,
        log_level: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> ServerProcess {
        let port = free_port();
        let log = data_dir.join(format!("server-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = cli(data_dir, database_url)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("STRONGROOM_LOG_LEVEL", log_level)
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let address = format!("http://127.0.0.1:{port}");
        let client = crate::helpers::http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(res) = client.get(format!("{address}/readyz")).send().await
                && res.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server did not become ready; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ServerProcess {
            child,
            address,
            log,
        }
    }
}

impl ServerProcess {
    /// Stops the server the way an operator does (SIGTERM) and waits, so
    /// everything it buffers (the access log) is written.
    pub async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory of the server so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Runs the CLI with `args`, asserts success and parses its last line as JSON.
pub fn cli_json(data_dir: &std::path::Path, database_url: &str, args: &[&str]) -> Value {
    let out = cli(data_dir, database_url).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("some output")).unwrap()
}

pub const CREATE_ACME: &[&str] = &[
    "tenant",
    "create",
    "--slug",
    "acme",
    "--name",
    "Acme Ltd",
    "--admin-email",
    "admin@acme.test",
    "--json",
];

/// Runs a command to completion off the test's runtime thread. A test's
/// in-process server shares that thread: blocking it in `output()` would
/// stall the server's writer mid-batch (holding a tenant's sequence row on
/// PostgreSQL) while the command waits for that very row.
pub trait RunOff {
    fn run(&mut self) -> impl std::future::Future<Output = std::io::Result<std::process::Output>>;
}

impl RunOff for Command {
    fn run(&mut self) -> impl std::future::Future<Output = std::io::Result<std::process::Output>> {
        let mut taken = std::mem::replace(self, Command::new("true"));
        async move {
            tokio::task::spawn_blocking(move || taken.output())
                .await
                .map_err(std::io::Error::other)?
        }
    }
}

/// A real SMTP server (aiosmtpd, `scripts/mail/sink.py`) on a loopback
/// port, keeping every message it accepts for the test to read. It stops
/// when this value is dropped (its standard input closes).
pub struct MailSink {
    pub port: u16,
    dir: PathBuf,
    _process: tokio::process::Child,
}

/// One message as the sink received and decoded it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SunkMail {
    pub rcpt_tos: Vec<String>,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
}

impl SunkMail {
    /// The token after `#token=` in the message's link.
    pub fn token(&self) -> String {
        let text = self.text.as_deref().unwrap_or_default();
        let start = text.find("#token=").expect("the mail carries a link") + "#token=".len();
        text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect()
    }
}

impl MailSink {
    pub async fn start() -> MailSink {
        Self::start_with(&[]).await
    }

    /// A sink that requires AUTH with `user` and `password`.
    pub async fn with_auth(user: &str, password: &str) -> MailSink {
        Self::start_with(&[user, password]).await
    }

    async fn start_with(credentials: &[&str]) -> MailSink {
        use tokio::io::AsyncBufReadExt;
        let python = std::env::var("STRONGROOM_TEST_PYTHON").expect(
            "STRONGROOM_TEST_PYTHON is unset: run the suite with scripts/test, which installs \
             aiosmtpd into target/test-venv",
        );
        let dir = temp_dir("mail");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mail/sink.py");
        let mut process = tokio::process::Command::new(python)
            .arg(script)
            .arg(&dir)
            .args(credentials)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the mail sink starts");
        let stdout = process.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the mail sink says where it listens")
            .unwrap()
            .unwrap_or_default();
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the mail sink: {line:?}"));
        MailSink {
            port,
            dir,
            _process: process,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, oldest first.
    pub fn received(&self) -> Vec<SunkMail> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    /// The messages to `to`, oldest first.
    pub fn to(&self, to: &str) -> Vec<SunkMail> {
        self.received()
            .into_iter()
            .filter(|m| m.rcpt_tos.iter().any(|r| r == to))
            .collect()
    }

    /// Waits (up to 20 s) until `to` has received `count` messages, and
    /// returns the newest.
    pub async fn nth_to(&self, to: &str, count: usize) -> SunkMail {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mails = self.to(to);
            if mails.len() >= count {
                return mails[count - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{to} received {} of {count} mails: {:?}",
                mails.len(),
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 20 s) until `to` has received `count` messages whose
    /// subject starts with `subject`, and returns the newest of them.
    pub async fn nth_about(&self, to: &str, subject: &str, count: usize) -> SunkMail {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mails: Vec<SunkMail> = self
                .to(to)
                .into_iter()
                .filter(|m| m.subject.starts_with(subject))
                .collect();
            if mails.len() >= count {
                return mails[count - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{to} received {} of {count} mails about {subject:?}",
                mails.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the first message to `to`.
    pub async fn first_to(&self, to: &str) -> SunkMail {
        self.nth_to(to, 1).await
    }
}

/// An app that mails through `sink`, with its delivery job running.
pub async fn spawn_app_mailing(sink: &MailSink) -> TestApp {
    spawn_app_mailing_with(sink, |_| {}).await
}

/// [`spawn_app_mailing`] with a changed configuration.
pub async fn spawn_app_mailing_with(
    sink: &MailSink,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let url = sink.url();
    let app = spawn_app_with(|config| {
        config.smtp_url = Some(url);
        config.smtp_from = "Strongroom Tests <noreply@strongroom.test>".to_owned();
        config.public_url = Some("https://app.strongroom.test".to_owned());
        configure(config);
    })
    .await;
    strongroom::cli::start_mail_delivery(&app.state);
    app
}

impl TestApp {
    /// A new tenant and its first admin, logged in with the invitation
    /// `sink` received.
    pub async fn admin_via(&self, sink: &MailSink, slug: &str) -> Session {
        let created = self.create_tenant(slug).await;
        assert!(
            created.invitation_token.is_none(),
            "a mailed token is not shown"
        );
        let mail = sink.first_to(&created.admin_email).await;
        self.accept(&mail.token(), &created.admin_email, &created.tenant_id)
            .await
    }

    /// Invites a user with `role` and logs them in with the mailed token.
    pub async fn user_via(
        &self,
        sink: &MailSink,
        admin: &Session,
        email: &str,
        role: &str,
    ) -> Session {
        let before = sink.to(email).len();
        let res = self
            .post(
                "/api/v1/users",
                Some(&admin.access_token),
                json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let mail = sink.nth_to(email, before + 1).await;
        self.accept(&mail.token(), email, &admin.tenant_id).await
    }
}

/// A software passkey (soft-webauthn, `scripts/webauthn/authenticator.py`):
/// one child process, one credential, an implementation independent of
/// the server's.
pub struct Authenticator {
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    _process: tokio::process::Child,
}

/// The origin the passkey tests' front end is at (`public_url`).
pub const PASSKEY_ORIGIN: &str = "https://app.acme.test";

impl Authenticator {
    pub fn start() -> Authenticator {
        use tokio::io::AsyncBufReadExt;
        let python = std::env::var("STRONGROOM_TEST_WEBAUTHN_PYTHON").expect(
            "STRONGROOM_TEST_WEBAUTHN_PYTHON is unset: run the suite with scripts/test, which \
             installs soft-webauthn into target/webauthn-venv",
        );
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts/webauthn/authenticator.py");
        let mut process = tokio::process::Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the software authenticator starts");
        let stdin = process.stdin.take().unwrap();
        let lines = tokio::io::BufReader::new(process.stdout.take().unwrap()).lines();
        Authenticator {
            stdin,
            lines,
            _process: process,
        }
    }

    async fn ask(&mut self, command: Value) -> Value {
        use tokio::io::AsyncWriteExt;
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("the authenticator answers")
            .unwrap()
            .expect("the authenticator is running");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert!(answer.get("error").is_none(), "authenticator: {answer}");
        answer
    }

    /// `navigator.credentials.create()` at `origin`.
    pub async fn create(&mut self, options: &Value, origin: &str) -> Value {
        self.ask(json!({"op": "create", "options": options, "origin": origin}))
            .await
    }

    /// `navigator.credentials.get()` at the tests' origin; `uv`: the user
    /// verified themselves to the authenticator.
    pub async fn get(&mut self, options: &Value, uv: bool) -> Value {
        self.ask(json!({"op": "get", "options": options, "origin": PASSKEY_ORIGIN, "uv": uv}))
            .await
    }
}

/// An app whose front end is at [`PASSKEY_ORIGIN`].
pub async fn spawn_app_for_passkeys() -> TestApp {
    spawn_app_with(|c| {
        c.public_url = Some(PASSKEY_ORIGIN.to_owned());
        c.login_attempts_per_minute_per_ip = 1_000_000;
        c.login_attempts_per_minute_per_account = 1_000_000;
    })
    .await
}

/// Registers a passkey for `who` with `authenticator`: its factor id.
pub async fn register_passkey(
    app: &TestApp,
    who: &Session,
    authenticator: &mut Authenticator,
) -> String {
    let res = app
        .post(
            "/api/v1/auth/mfa/factors",
            Some(&who.access_token),
            json!({"kind": "passkey", "name": "soft key"}),
        )
        .await;
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    let started: Value = res.json().await.unwrap();
    let id = started["factor_id"].as_str().unwrap().to_owned();
    let credential = authenticator
        .create(&started["passkey"], PASSKEY_ORIGIN)
        .await;
    let res = app
        .post(
            &format!("/api/v1/auth/mfa/factors/{id}/confirm"),
            Some(&who.access_token),
            json!({ "credential": credential }),
        )
        .await;
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    id
}

/// RFC 4648 base32 (no padding), as TOTP secrets are given out.
pub fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut bits, mut value) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let index = ALPHABET.iter().position(|a| *a == c).expect("base32") as u32;
        value = (value << 5) | index;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
            value &= (1 << bits) - 1;
        }
    }
    out
}

/// The TOTP code `offset` steps from now.
pub fn totp_code(secret: &[u8], offset: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    strongroom::identity::totp::code(secret, strongroom::identity::totp::step_at(now) + offset)
}

/// The `key` of each item of a JSON list.
pub fn strings(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|item| item[key].as_str().unwrap_or_default().to_owned())
        .collect()
}
