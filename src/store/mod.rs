//! The store: one database, chosen once from the URL scheme, and the one
//! write path every mutation goes through (DESIGN.md invariants 1, 2, 5).
//!
//! * Tenant data is reached only through a [`TenantScope`]: [`Store::read`]
//!   and [`Store::write`] take one, and on PostgreSQL they also set
//!   `app.tenant_id` for the transaction so row-level security holds even
//!   where a query forgets its `tenant_id` filter (TEN-1, TEN-2).
//! * [`Store::write`] runs permission-checked work ([`Permit`]), then appends
//!   the journal entries (after-images, per-tenant gap-free sequence) and the
//!   audit event, and commits all of it or none of it (AUD-1, BAK-1).
//! * A write is acknowledged only once it is durable: SQLite runs with
//!   `synchronous=FULL`, PostgreSQL commits synchronously, and throughput
//!   comes from group commit on both — concurrent writers share one
//!   transaction and one flush (BAK-7).
//! * With several app servers on one PostgreSQL, scheduled jobs hold leases
//!   and cached keys are forgotten on announcement (`cluster`).
//!
//! Statements go through the project's own data layer ([`db`]), native per
//! backend. Both backends run the same SQL text (`$1` placeholders work on
//! SQLite too); where dialects differ, the [`Backend`] says which to use.

pub mod chain;
mod cluster;
pub mod db;
pub mod image;
mod journal;
mod migrations;
pub mod sql;
mod trail;
mod write;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use db::Conn;

pub use journal::{Change, JournalOp};
pub use write::WriteTx;

use crate::context::{Permit, RequestMeta, TenantScope};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Chooses the backend from the URL scheme; anything else is refused.
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(StoreError::UnsupportedScheme(other.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL scheme {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedScheme(String),
    #[error("database error: {0}")]
    Database(#[from] db::Error),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: db::Error },
    #[error("the write path has stopped")]
    WriterStopped,
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Native(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(db::Error::Postgres(e))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(db::Error::Sqlite(e))
    }
}

impl StoreError {
    /// Whether this is a unique-constraint violation on `table`; domains
    /// map it to their own conflict errors ("email taken").
    pub fn is_unique_violation_on(&self, table: &str) -> bool {
        matches!(self, StoreError::Database(e) if e.is_unique_violation_on(table))
    }
}

/// A read in one tenant's scope: a transaction, one consistent snapshot.
pub struct ReadTx {
    conn: Conn,
    backend: Backend,
}

impl ReadTx {
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// The migration that gave audit events their environment column.
const ENVIRONMENT_SCHEMA: i64 = 8;
/// The schema version whose journal images rows (BAK-4).
pub const IMAGES_SCHEMA: i64 = 15;

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

enum Reads {
    /// Read-only connections on the database file, used in the caller's
    /// thread (the file also serves verification).
    Sqlite(Arc<db::SqliteReaders>),
    /// Transactions from the pool; single statements on session readers.
    Postgres(PgPool, Arc<db::PgReaders>),
}

struct Inner {
    backend: Backend,
    reads: Reads,
    writer: write::Writer,
    leases: cluster::Leases,
    /// Caches that forget what the write path changes.
    watchers: cluster::Watchers,
    /// Whether this node listens for other nodes' watched changes.
    listening: std::sync::atomic::AtomicBool,
    /// The last schema migration this process applied up to (an operator
    /// may hold it back: `migrate_until`).
    migrated_until: i64,
    /// This process among the app servers sharing the database.
    node: String,
    /// The instance's environment, recorded in every audit event (TEN-3).
    environment: std::sync::OnceLock<&'static str>,
    /// The restorable tables' columns (BAK-4), once the schema has the
    /// journal's images.
    images: Option<Arc<image::Images>>,
}

impl Store {
    /// Connects, runs pending migrations and starts the write path.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Store, StoreError> {
        Self::connect_migrated_until(url, max_connections, None).await
    }

    /// [`Store::connect`], applying migrations only up to `until` when set.
    pub async fn connect_migrated_until(
        url: &SecretString,
        max_connections: u32,
        until: Option<i64>,
    ) -> Result<Store, StoreError> {
        let backend = Backend::from_url(url.expose_secret())?;
        let until = until.unwrap_or(i64::MAX);
        match backend {
            Backend::Sqlite => Self::connect_sqlite(url.expose_secret(), until).await,
            Backend::Postgres => {
                Self::connect_postgres(url.expose_secret(), max_connections, until).await
            }
        }
    }

    async fn connect_sqlite(url: &str, until: i64) -> Result<Store, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let sqlite_file = std::path::PathBuf::from(path.split('?').next().unwrap_or(path));
        // The single writer connection; readers cannot write at all: every
        // mutation goes through the writer.
        let mut writes = db::Conn::sqlite(db::open_sqlite_writer(&sqlite_file)?);
        migrations::run_sqlite(&mut writes, until).await?;
        let images = if until >= IMAGES_SCHEMA {
            Some(Arc::new(
                image::Images::load(&mut writes, Backend::Sqlite).await?,
            ))
        } else {
            None
        };
        let writer = write::Writer::group_commit(writes);
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Backend::Sqlite,
                reads: Reads::Sqlite(db::SqliteReaders::new(sqlite_file)),
                writer,
                leases: cluster::Leases::Local,
                node: cluster::node_name(),
                watchers: cluster::Watchers::default(),
                listening: std::sync::atomic::AtomicBool::new(false),
                migrated_until: until,
                environment: std::sync::OnceLock::new(),
                images,
            }),
        })
    }

    async fn connect_postgres(
        url: &str,
        max_connections: u32,
        until: i64,
    ) -> Result<Store, StoreError> {
        // The writer sends values inlined in its statements' text: the
        // driver's statement log would carry them, so it is off (AUD-3).
        let options: PgConnectOptions =
            sqlx::ConnectOptions::disable_statement_logging(url.parse::<PgConnectOptions>()?);
        let mut images = None;
        {
            // Migrations run as the connecting user (the schema owner) …
            let owner = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            migrations::run_postgres(&owner, until).await?;
            if until >= IMAGES_SCHEMA {
                let mut conn = Conn::postgres(owner.begin().await?);
                images = Some(Arc::new(
                    image::Images::load(&mut conn, Backend::Postgres).await?,
                ));
                conn.commit().await?;
            }
            owner.close().await;
        }
        // … and everything else as strongroom_app, which RLS binds.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(db::PG_SESSION_SETUP).await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Backend::Postgres,
                reads: Reads::Postgres(
                    pool.clone(),
                    db::PgReaders::new(options.clone(), max_connections),
                ),
                writer: write::Writer::group_commit_postgres(pool),
                leases: cluster::Leases::postgres(options),
                node: cluster::node_name(),
                watchers: cluster::Watchers::default(),
                listening: std::sync::atomic::AtomicBool::new(false),
                migrated_until: until,
                environment: std::sync::OnceLock::new(),
                images,
            }),
        })
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// How rows are imaged and put back (BAK-4); `None` before the schema
    /// has the journal's images.
    pub fn images(&self) -> Option<&image::Images> {
        self.inner.images.as_deref()
    }

    /// A read-only snapshot in `scope` that stays one snapshot across its
    /// statements on PostgreSQL too (`REPEATABLE READ`), for backups.
    pub async fn read_consistent(&self, scope: &TenantScope) -> Result<ReadTx, StoreError> {
        let conn = match &self.inner.reads {
            Reads::Sqlite(readers) => readers.begin()?,
            Reads::Postgres(pool, _) => Conn::postgres(
                pool.begin_with(format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {}",
                    tenant_setting(Some(scope))
                ))
                .await?,
            ),
        };
        Ok(ReadTx {
            conn,
            backend: self.inner.backend,
        })
    }

    /// The SQLite database file, when that is the backend.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match &self.inner.reads {
            Reads::Sqlite(readers) => Some(readers.path().to_owned()),
            Reads::Postgres(..) => None,
        }
    }

    /// A read-only snapshot in `scope`.
    pub async fn read(&self, scope: &TenantScope) -> Result<ReadTx, StoreError> {
        let conn = match &self.inner.reads {
            Reads::Sqlite(readers) => readers.begin()?,
            Reads::Postgres(pool, _) => {
                Conn::postgres(pool.begin_with(begin_in(Some(scope))).await?)
            }
        };
        Ok(ReadTx {
            conn,
            backend: self.inner.backend,
        })
    }

    /// Reads in `scope` where each statement is its own snapshot, for the
    /// point reads of a request: no transaction to open or end. On SQLite
    /// a reader outside a transaction; on PostgreSQL a session reader with
    /// the tenant set for RLS (`db::PgReaders`), usually one round trip a
    /// statement.
    pub async fn read_each(&self, scope: &TenantScope) -> Result<ReadTx, StoreError> {
        let conn = match &self.inner.reads {
            Reads::Sqlite(readers) => readers.single()?,
            Reads::Postgres(_, sessions) => {
                sessions.session(Some(scope.tenant_id().as_uuid())).await?
            }
        };
        Ok(ReadTx {
            conn,
            backend: self.inner.backend,
        })
    }

    /// The first row of one statement in `scope`, every column as text,
    /// for the point read every request makes (the session check). `sql`
    /// numbers its parameters `$1`, `$2`, … as everywhere else.
    ///
    /// It is one statement outside a transaction ([`Store::read_each`]): on
    /// SQLite an indexed read under WAL does not wait for writers; on
    /// PostgreSQL one round trip on a session reader with the tenant set.
    pub async fn read_text_row(
        &self,
        scope: &TenantScope,
        sql: &str,
        binds: &[&str],
    ) -> Result<Option<Vec<Option<String>>>, StoreError> {
        let mut conn = self.read_each(scope).await?.conn;
        let mut query = db::query(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        Ok(query
            .fetch_optional(&mut conn)
            .await?
            .map(db::Row::into_texts))
    }

    /// A read outside any tenant: only tables that are not tenant-owned
    /// (the tenant directory) are visible; on PostgreSQL RLS hides the rest.
    pub(crate) async fn read_unscoped(&self) -> Result<ReadTx, StoreError> {
        let conn = match &self.inner.reads {
            Reads::Sqlite(readers) => readers.begin()?,
            Reads::Postgres(pool, _) => Conn::postgres(pool.begin().await?),
        };
        Ok(ReadTx {
            conn,
            backend: self.inner.backend,
        })
    }

    /// Every tenant's scope, for the system's own jobs and the operator's
    /// views (the tenant directory is the one table outside every scope).
    pub async fn tenant_scopes(&self) -> Result<Vec<TenantScope>, StoreError> {
        let mut tx = self.read_unscoped().await?;
        let ids: Vec<String> = db::query_scalar("SELECT id FROM tenants ORDER BY id")
            .fetch_all(tx.conn())
            .await?;
        Ok(ids
            .iter()
            .filter_map(|id| crate::context::TenantId::parse(id))
            .map(TenantScope::trusted)
            .collect())
    }

    /// The one write path. `work` changes rows and describes them with
    /// [`WriteTx::record`]; then the journal entries and the audit event
    /// `action` are appended and everything commits together. An error from
    /// `work` rolls all of it back.
    pub async fn write<T, E, F>(
        &self,
        permit: &Permit,
        meta: &RequestMeta,
        action: &'static str,
        work: F,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: for<'a> FnOnce(&'a mut WriteTx) -> futures_util::future::BoxFuture<'a, Result<T, E>>
            + Send
            + 'static,
    {
        self.inner
            .writer
            .submit(
                (
                    self.inner.backend,
                    &self.inner.watchers,
                    // Not before the schema has its column (`migrate_until`).
                    self.inner
                        .environment
                        .get()
                        .copied()
                        .filter(|_| self.schema_has(ENVIRONMENT_SCHEMA)),
                    self.inner.images.clone(),
                ),
                permit,
                meta,
                action,
                work,
            )
            .await
    }

    /// Appends system records (checkpoints, access log, heartbeats) on the
    /// writing connection, without a journal entry or audit event of their
    /// own. Not for tenant data: that goes through [`Store::write`].
    pub(crate) async fn append_internal<T, F>(
        &self,
        scope: Option<&TenantScope>,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(
                &'a mut Conn,
            )
                -> futures_util::future::BoxFuture<'a, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.inner
            .writer
            .submit_internal(scope.cloned(), work)
            .await
    }

    /// Whether the schema includes migration `version`: a feature whose
    /// tables came later stays off while `migrate_until` holds it back.
    pub fn schema_has(&self, version: i64) -> bool {
        self.inner.migrated_until >= version
    }

    /// Names the instance's environment (`production`, `test`, …) for
    /// every audit event written from now on; set once, at start.
    pub fn set_environment(&self, environment: &'static str) {
        let _ = self.inner.environment.set(environment);
    }

    /// This process's name among the app servers on the database.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether this node runs scheduled `job` now: on PostgreSQL one node
    /// at a time holds each job's lease (see `cluster`); on SQLite, always.
    pub async fn hold_lease(&self, job: &str) -> bool {
        self.inner.leases.hold(job).await
    }

    /// Calls `on_change` with every payload announced on `channel` by any
    /// node ([`db::Conn::announce`]), and with `None` when announcements may
    /// have been missed. On SQLite, with one server per database, there is
    /// nothing to listen to.
    pub async fn on_announcement(
        &self,
        channel: &'static str,
        on_change: impl Fn(Option<&str>) + Send + Sync + 'static,
    ) -> Result<(), StoreError> {
        if let cluster::Leases::Postgres(pg) = &self.inner.leases {
            cluster::listen(pg.options(), channel, Arc::new(on_change)).await?;
        }
        Ok(())
    }

    /// Calls `on_change` with the tenant whenever a write that updated or
    /// deleted an entity of one of `kinds` commits — on this node before
    /// the writer's caller hears of it, on the others when PostgreSQL
    /// delivers the announcement — and with `None` when announcements may
    /// have been missed. For caches of what the write path changes.
    pub async fn watch(
        &self,
        kinds: &'static [&'static str],
        on_change: impl Fn(Option<&str>) + Send + Sync + 'static,
    ) -> Result<(), StoreError> {
        self.inner.watchers.add(kinds, Arc::new(on_change));
        if let cluster::Leases::Postgres(pg) = &self.inner.leases
            && !self
                .inner
                .listening
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let watchers = self.inner.watchers.clone();
            cluster::listen(
                pg.options(),
                cluster::CHANGES,
                Arc::new(move |payload| watchers.announced(payload)),
            )
            .await?;
        }
        Ok(())
    }

    /// Jobs waiting for the writer now (`/metrics`).
    pub fn writer_queued(&self) -> usize {
        self.inner.writer.queued()
    }

    /// Read-pool connections in use and idle, and the most allowed, on
    /// PostgreSQL (`/metrics`); SQLite opens its readers as it needs them.
    pub fn pool_use(&self) -> Option<(usize, usize, usize)> {
        match &self.inner.reads {
            Reads::Sqlite(_) => None,
            Reads::Postgres(pool, _) => {
                let size = pool.size() as usize;
                let idle = pool.num_idle();
                Some((
                    size.saturating_sub(idle),
                    idle,
                    pool.options().get_max_connections() as usize,
                ))
            }
        }
    }

    /// Readiness: the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = match &self.inner.reads {
            Reads::Sqlite(readers) => readers.single()?,
            Reads::Postgres(pool, _) => Conn::postgres(pool.begin().await?),
        };
        db::query("SELECT 1").fetch_one(&mut conn).await?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Reads::Postgres(pool, _) = &self.inner.reads {
            pool.close().await;
        }
        self.inner.writer.close().await;
    }
}

/// The statement that sets the tenant row-level security checks, for the
/// rest of the transaction (PostgreSQL). It is sent with the statement
/// before it (`BEGIN`, `SAVEPOINT`) in one round trip, so the id stands in
/// the text: it is a UUID's canonical form (a `TenantId` is parsed, never
/// free text), and no scope reads as no tenant, which matches no row.
fn tenant_setting(scope: Option<&TenantScope>) -> String {
    let id = scope.map(|s| s.tenant_id().to_string()).unwrap_or_default();
    format!("SELECT set_config('app.tenant_id', '{id}', true)")
}

/// `BEGIN` with the tenant set, in one round trip.
fn begin_in(scope: Option<&TenantScope>) -> String {
    format!("BEGIN; {}", tenant_setting(scope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_url_schemes_are_refused_with_a_clear_message() {
        let err = Backend::from_url("mysql://root@localhost/db").unwrap_err();
        assert!(err.to_string().contains("\"mysql\""), "{err}");
        assert!(err.to_string().contains("sqlite://"), "{err}");
        assert_eq!(Backend::from_url("sqlite://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("postgres://u@h/d").unwrap(),
            Backend::Postgres
        );
    }
}
