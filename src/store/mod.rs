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
//!   `synchronous=FULL`, and throughput comes from group commit — concurrent
//!   writers share one transaction and one fsync (BAK-7).
//!
//! Both backends run the same SQL text through sqlx's `Any` driver (`$1`
//! placeholders work on SQLite too); where dialects differ, the
//! [`Backend`] says which fragment to use.

mod journal;
mod migrations;
mod native;
pub mod sql;
mod write;

use std::sync::{Arc, Once};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row, Transaction};

pub use journal::JournalOp;
pub use write::{Change, WriteTx};

use crate::access::Permit;
use crate::audit::RequestMeta;
use crate::tenancy::TenantScope;

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
    Database(#[from] sqlx::Error),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    #[error("the write path has stopped")]
    WriterStopped,
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Native(String),
}

impl StoreError {
    /// Whether this is a unique-constraint violation on `table`; domains
    /// map it to their own conflict errors ("email taken"). PostgreSQL names
    /// the table; SQLite says "UNIQUE constraint failed: table.column, …".
    pub fn is_unique_violation_on(&self, table: &str) -> bool {
        let StoreError::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        db.is_unique_violation()
            && (db.table() == Some(table)
                || db
                    .message()
                    .strip_prefix("UNIQUE constraint failed: ")
                    .is_some_and(|columns| {
                        columns
                            .strip_prefix(table)
                            .is_some_and(|rest| rest.starts_with('.'))
                    }))
    }
}

/// A read in one tenant's scope: a transaction, one consistent snapshot.
pub struct ReadTx {
    conn: Transaction<'static, Any>,
    backend: Backend,
}

impl ReadTx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// SQLite: native read-only connections on the database file, for
    /// per-request point reads (the file also serves verification).
    native_reads: Option<native::NativeReads>,
    reads: AnyPool,
    writer: write::Writer,
}

static INSTALL_DRIVERS: Once = Once::new();

impl Store {
    /// Connects, runs pending migrations and starts the write path.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Store, StoreError> {
        INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::from_url(url.expose_secret())?;
        match backend {
            Backend::Sqlite => Self::connect_sqlite(url.expose_secret(), max_connections).await,
            Backend::Postgres => Self::connect_postgres(url.expose_secret(), max_connections).await,
        }
    }

    async fn connect_sqlite(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let sqlite_file = std::path::PathBuf::from(path.split('?').next().unwrap_or(path));
        let url = if url.contains('?') {
            url.to_owned()
        } else {
            format!("{url}?mode=rwc")
        };
        let options: AnyConnectOptions = url.parse()?;
        // The single writer connection: WAL, and FULL sync so that a commit
        // is on disk before we acknowledge it (invariant 5).
        let writes = AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                         PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        migrations::run(&writes, Backend::Sqlite).await?;
        // Readers cannot write at all: every mutation goes through the writer.
        let reads = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000; PRAGMA query_only=ON;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let writer = write::Writer::group_commit(writes);
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Backend::Sqlite,
                native_reads: Some(native::NativeReads::new(sqlite_file)),
                reads,
                writer,
            }),
        })
    }

    async fn connect_postgres(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let options: AnyConnectOptions = url.parse()?;
        {
            // Migrations run as the connecting user (the schema owner) …
            let mut conn = AnyConnection::connect_with(&options).await?;
            migrations::run_on(&mut conn, Backend::Postgres).await?;
            conn.close().await?;
        }
        // … and everything else as strongroom_app, which RLS binds.
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET ROLE strongroom_app").await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Backend::Postgres,
                native_reads: None,
                reads: pool.clone(),
                writer: write::Writer::per_transaction(pool),
            }),
        })
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The SQLite database file, when that is the backend.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        self.inner
            .native_reads
            .as_ref()
            .map(|native| native.path().to_owned())
    }

    /// A read-only snapshot in `scope`.
    pub async fn read(&self, scope: &TenantScope) -> Result<ReadTx, StoreError> {
        let mut tx = self.inner.reads.begin().await?;
        if self.inner.backend == Backend::Postgres {
            set_tenant(&mut tx, scope).await?;
        }
        Ok(ReadTx {
            conn: tx,
            backend: self.inner.backend,
        })
    }

    /// The first row of one statement in `scope` whose columns are all
    /// text, for the point read every request makes (the session check).
    /// `sql` numbers its parameters `$1`, `$2`, … as everywhere else.
    ///
    /// On SQLite it runs in the calling thread on a native read-only
    /// connection: through sqlx every statement is a hand-off to a worker
    /// thread and back, which cost more than the indexed lookup itself. An
    /// indexed read under WAL does not wait for writers. On PostgreSQL it is
    /// a transaction with the tenant set, as RLS needs.
    pub async fn read_text_row(
        &self,
        scope: &TenantScope,
        sql: &str,
        binds: &[&str],
    ) -> Result<Option<Vec<Option<String>>>, StoreError> {
        if let Some(native) = &self.inner.native_reads {
            return native.text_row(sql, binds);
        }
        let mut tx = self.read(scope).await?;
        let mut query = sqlx::query(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        let Some(row) = query.fetch_optional(tx.conn()).await? else {
            return Ok(None);
        };
        let columns = (0..row.len())
            .map(|i| row.try_get::<Option<String>, _>(i))
            .collect::<Result<_, _>>()?;
        Ok(Some(columns))
    }

    /// A read outside any tenant: only tables that are not tenant-owned
    /// (the tenant directory) are visible; on PostgreSQL RLS hides the rest.
    pub(crate) async fn read_unscoped(&self) -> Result<ReadTx, StoreError> {
        let tx = self.inner.reads.begin().await?;
        Ok(ReadTx {
            conn: tx,
            backend: self.inner.backend,
        })
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
            .submit(self.inner.backend, permit, meta, action, work)
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
                &'a mut AnyConnection,
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

    /// Readiness: the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.reads).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.inner.reads.close().await;
        self.inner.writer.close().await;
    }
}

async fn set_tenant(conn: &mut AnyConnection, scope: &TenantScope) -> Result<(), StoreError> {
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(scope.id_str())
        .execute(conn)
        .await?;
    Ok(())
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
