//! Embedded, ordered migrations, one set per backend. Each runs in its own
//! transaction and is recorded in `schema_migrations`; on PostgreSQL an
//! advisory lock keeps app servers that start together from racing.

use sqlx::PgPool;

use super::db::{self, Conn};
use super::{Backend, StoreError};

const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_init.sql")),
    (2, include_str!("migrations/sqlite/0002_audit_trail.sql")),
    (
        3,
        include_str!("migrations/sqlite/0003_audit_clustered.sql"),
    ),
    (4, include_str!("migrations/sqlite/0004_keys_and_files.sql")),
    (5, include_str!("migrations/sqlite/0005_job_nodes.sql")),
    (6, include_str!("migrations/sqlite/0006_ip_allowlist.sql")),
    (
        7,
        include_str!("migrations/sqlite/0007_instance_starts.sql"),
    ),
    (8, include_str!("migrations/sqlite/0008_front_door.sql")),
    (9, include_str!("migrations/sqlite/0009_posture.sql")),
    (
        10,
        include_str!("migrations/sqlite/0010_session_settings.sql"),
    ),
    (
        11,
        include_str!("migrations/sqlite/0011_mail_and_passwords.sql"),
    ),
    (
        12,
        include_str!("migrations/sqlite/0012_devices_and_lockout.sql"),
    ),
    (13, include_str!("migrations/sqlite/0013_mfa.sql")),
    (
        14,
        include_str!("migrations/sqlite/0014_sms_passkeys_trust.sql"),
    ),
    (
        15,
        include_str!("migrations/sqlite/0015_restorable_journal.sql"),
    ),
    (
        16,
        include_str!("migrations/sqlite/0016_roles_and_api_keys.sql"),
    ),
    (17, include_str!("migrations/sqlite/0017_operators.sql")),
    (
        18,
        include_str!("migrations/sqlite/0018_support_access.sql"),
    ),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001_init.sql")),
    (2, include_str!("migrations/postgres/0002_audit_trail.sql")),
    (
        3,
        include_str!("migrations/postgres/0003_keys_and_files.sql"),
    ),
    (4, include_str!("migrations/postgres/0004_job_nodes.sql")),
    (5, include_str!("migrations/postgres/0005_native_types.sql")),
    (6, include_str!("migrations/postgres/0006_ip_allowlist.sql")),
    (
        7,
        include_str!("migrations/postgres/0007_instance_starts.sql"),
    ),
    (8, include_str!("migrations/postgres/0008_front_door.sql")),
    (9, include_str!("migrations/postgres/0009_posture.sql")),
    (
        10,
        include_str!("migrations/postgres/0010_session_settings.sql"),
    ),
    (
        11,
        include_str!("migrations/postgres/0011_mail_and_passwords.sql"),
    ),
    (
        12,
        include_str!("migrations/postgres/0012_devices_and_lockout.sql"),
    ),
    (13, include_str!("migrations/postgres/0013_mfa.sql")),
    (
        14,
        include_str!("migrations/postgres/0014_sms_passkeys_trust.sql"),
    ),
    (
        15,
        include_str!("migrations/postgres/0015_restorable_journal.sql"),
    ),
    (
        16,
        include_str!("migrations/postgres/0016_roles_and_api_keys.sql"),
    ),
    (17, include_str!("migrations/postgres/0017_operators.sql")),
    (
        18,
        include_str!("migrations/postgres/0018_support_access.sql"),
    ),
];

/// An arbitrary constant naming "Strongroom migrations" for pg_advisory_xact_lock.
const MIGRATION_LOCK: i64 = 0x5354_524f_4e47;

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
    version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)";

/// SQLite: on the writer's connection, before the writer starts; the steps
/// up to version `until`.
pub(super) async fn run_sqlite(conn: &mut Conn, until: i64) -> Result<(), StoreError> {
    conn.execute_batch(LEDGER).await?;
    for &(version, sql) in SQLITE.iter().filter(|(v, _)| *v <= until) {
        conn.execute_batch("BEGIN IMMEDIATE").await?;
        let applied = apply(conn, Backend::Sqlite, version, sql).await;
        let end = if matches!(applied, Ok(true)) {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        conn.execute_batch(end).await?;
        applied?;
    }
    Ok(())
}

/// PostgreSQL: as the connecting user, each step in its own transaction
/// under an advisory lock, so app servers that start together do not race;
/// the steps up to version `until`.
pub(super) async fn run_postgres(pool: &PgPool, until: i64) -> Result<(), StoreError> {
    let mut conn = Conn::postgres(pool.begin().await?);
    conn.execute_batch(LEDGER).await?;
    conn.commit().await?;
    for &(version, sql) in POSTGRES.iter().filter(|(v, _)| *v <= until) {
        let mut conn = Conn::postgres(pool.begin().await?);
        db::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut conn)
            .await?;
        if apply(&mut conn, Backend::Postgres, version, sql).await? {
            conn.commit().await?;
        }
    }
    Ok(())
}

/// Applies one step unless it is recorded; whether it applied it.
async fn apply(
    conn: &mut Conn,
    backend: Backend,
    version: i64,
    sql: &str,
) -> Result<bool, StoreError> {
    let applied: Option<i64> =
        db::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
            .bind(version)
            .fetch_optional(conn)
            .await?;
    if applied.is_some() {
        return Ok(false);
    }
    conn.execute_batch(sql)
        .await
        .map_err(|source| StoreError::Migration { version, source })?;
    db::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
        .bind(version)
        .bind(crate::clock::now())
        .execute(conn)
        .await?;
    tracing::info!(version, backend = backend.name(), "applied migration");
    Ok(true)
}
