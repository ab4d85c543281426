//! Embedded, ordered migrations, one set per backend. Each runs in its own
//! transaction and is recorded in `schema_migrations`; on PostgreSQL an
//! advisory lock keeps app servers that start together from racing.

use sqlx::{AnyConnection, AnyPool, Connection};

use super::{Backend, StoreError};

const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_init.sql")),
    (2, include_str!("migrations/sqlite/0002_audit_trail.sql")),
    (
        3,
        include_str!("migrations/sqlite/0003_audit_clustered.sql"),
    ),
    (4, include_str!("migrations/sqlite/0004_keys_and_files.sql")),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001_init.sql")),
    (2, include_str!("migrations/postgres/0002_audit_trail.sql")),
    (
        3,
        include_str!("migrations/postgres/0003_keys_and_files.sql"),
    ),
];

/// An arbitrary constant naming "Strongroom migrations" for pg_advisory_xact_lock.
const MIGRATION_LOCK: i64 = 0x5354_524f_4e47;

pub(super) async fn run(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    run_on(&mut conn, backend).await
}

pub(super) async fn run_on(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    let steps = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
           version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    for &(version, sql) in steps {
        let mut tx = conn.begin().await?;
        if backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if applied.is_some() {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|source| StoreError::Migration { version, source })?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(crate::clock::now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, backend = backend.name(), "applied migration");
    }
    Ok(())
}
