//! The access log (AUD-2, FIL-3 later): every HTTP request, reads included,
//! with time, tenant, user, method, route template and concrete path (the
//! "module"), activity type, status, latency, source IP, user agent,
//! request id and application version.
//!
//! Requests never wait for it: the HTTP layer hands rows to a background
//! task that writes them in batches (one transaction per tenant per batch,
//! on SQLite through the group-commit writer). The query string is never
//! logged, so filter values — which could name sensitive data — stay out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::export::{Exportable, Format, paged_stream, write_csv_line};
use super::query::{AuditError, parse_time};
use crate::context::{TenantId, TenantScope};
use crate::store::db;
use crate::store::sql::Sql;
use crate::store::{Backend, ReadTx, Store};

/// Rows per batch at most, and how long a row may wait for company.
const BATCH: usize = 1000;
const LINGER: Duration = Duration::from_millis(100);
/// Rows buffered in memory at most; beyond it rows are dropped (and counted)
/// rather than slowing requests down.
const BUFFER: usize = 65_536;

/// One request, as recorded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccessEntry {
    pub id: String,
    pub occurred_at: String,
    pub tenant_id: Option<String>,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub actor_email: Option<String>,
    pub method: String,
    /// The route template, e.g. `/api/v1/collections/{name}/records/{id}`.
    pub route: Option<String>,
    pub path: String,
    /// read, create, update, delete, auth or other.
    pub activity: String,
    pub status: i64,
    pub latency_us: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: String,
    pub app_version: String,
}

/// The activity type of a request.
pub fn activity(method: &str, route: Option<&str>) -> &'static str {
    if route.is_some_and(|r| r.starts_with("/api/v1/auth/")) {
        return "auth";
    }
    match method {
        "GET" | "HEAD" => "read",
        "POST" => "create",
        "PUT" | "PATCH" => "update",
        "DELETE" => "delete",
        _ => "other",
    }
}

enum Command {
    Row(Box<AccessEntry>),
    Flush(oneshot::Sender<()>),
}

/// Hands rows to the background writer.
#[derive(Clone)]
pub struct AccessLogger {
    sender: mpsc::Sender<Command>,
    /// Rows dropped since the buffer last took one.
    dropped: Arc<AtomicU64>,
}

impl AccessLogger {
    pub fn start(store: Store) -> AccessLogger {
        let (sender, receiver) = mpsc::channel(BUFFER);
        tokio::spawn(run(store, receiver));
        AccessLogger {
            sender,
            dropped: Arc::default(),
        }
    }

    /// Queues a row; never waits. A full buffer drops the row, and counts
    /// it: the metric at once, and a security log line with the count of
    /// each burst once the buffer takes rows again (NET-5).
    pub fn record(&self, entry: AccessEntry) {
        match self.sender.try_send(Command::Row(Box::new(entry))) {
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::metrics::get().access_log_dropped.inc();
                if self.dropped.fetch_add(1, Ordering::SeqCst) == 0 {
                    tracing::warn!(target: "security", "access log buffer full; dropping rows");
                }
            }
            Ok(()) => {
                let dropped = self.dropped.swap(0, Ordering::SeqCst);
                if dropped > 0 {
                    tracing::warn!(
                        target: "security",
                        dropped,
                        "access log buffer full: {dropped} rows were dropped"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Rows waiting to be written (`/metrics`).
    pub fn queued(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Waits until every row queued so far is written (tests, shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(store: Store, mut receiver: mpsc::Receiver<Command>) {
    let mut rows: Vec<AccessEntry> = Vec::with_capacity(BATCH);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = receiver.recv().await {
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Command::Row(row)) => rows.push(*row),
                Some(Command::Flush(done)) => {
                    waiting.push(done);
                    break;
                }
                None => {}
            }
            if rows.len() >= BATCH {
                break;
            }
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(command)) => next = Some(command),
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(e) = write_batch(&store, std::mem::take(&mut rows)).await {
            tracing::error!(error = %e, "could not write access log rows");
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

const COLUMNS: &str = "id, tenant_id, occurred_at, actor_type, actor_id, actor_email, method, \
     route, path, activity, status, latency_us, ip, user_agent, request_id, app_version";

/// PostgreSQL: a batch of rows, sent as one JSON array, in one statement.
fn pg_insert_rows() -> String {
    format!(
        "INSERT INTO access_log ({COLUMNS}) SELECT {COLUMNS} \
         FROM jsonb_to_recordset(CAST($1 AS jsonb)) AS r(id uuid, tenant_id uuid, \
         occurred_at timestamptz, actor_type text, actor_id text, actor_email text, method text, \
         route text, path text, activity text, status bigint, latency_us bigint, ip text, \
         user_agent text, request_id text, app_version text)"
    )
}

async fn insert_one(
    conn: &mut db::Conn,
    row: &AccessEntry,
) -> Result<(), crate::store::StoreError> {
    db::query(format!(
        "INSERT INTO access_log ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    ))
    .bind(&row.id)
    .bind(row.tenant_id.as_deref())
    .bind(&row.occurred_at)
    .bind(&row.actor_type)
    .bind(row.actor_id.as_deref())
    .bind(row.actor_email.as_deref())
    .bind(&row.method)
    .bind(row.route.as_deref())
    .bind(&row.path)
    .bind(&row.activity)
    .bind(row.status)
    .bind(row.latency_us)
    .bind(row.ip.as_deref())
    .bind(row.user_agent.as_deref())
    .bind(&row.request_id)
    .bind(&row.app_version)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_batch(
    store: &Store,
    rows: Vec<AccessEntry>,
) -> Result<(), crate::store::StoreError> {
    let mut by_tenant: std::collections::BTreeMap<Option<String>, Vec<AccessEntry>> =
        std::collections::BTreeMap::new();
    for row in rows {
        by_tenant
            .entry(row.tenant_id.clone())
            .or_default()
            .push(row);
    }
    for (tenant, rows) in by_tenant {
        let scope = tenant
            .as_deref()
            .and_then(TenantId::parse)
            .map(TenantScope::trusted);
        let backend = store.backend();
        store
            .append_internal(scope.as_ref(), move |conn| {
                Box::pin(async move {
                    match backend {
                        // In process, a statement per row costs nothing
                        // but its work.
                        Backend::Sqlite => {
                            for row in &rows {
                                insert_one(conn, row).await?;
                            }
                        }
                        // Over the network, the whole batch is one
                        // statement: the writer it shares waits for no
                        // round trip per request.
                        Backend::Postgres => {
                            let rows = serde_json::to_string(&rows).map_err(|e| {
                                crate::store::StoreError::Native(format!(
                                    "access log rows as JSON: {e}"
                                ))
                            })?;
                            db::query(pg_insert_rows()).bind(rows).execute(conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .await?;
    }
    Ok(())
}

/// Which rows to read.
#[derive(Debug, Clone, Default)]
pub struct AccessFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    /// A user id or e-mail address.
    pub user: Option<String>,
    pub path_prefix: Option<String>,
    pub status: Option<i64>,
    /// Support grants the reader may not be told of yet: their requests
    /// are left out.
    pub sealed_grants: Vec<String>,
}

impl AccessFilter {
    pub fn take(pairs: &mut Vec<(String, String)>) -> Result<AccessFilter, AuditError> {
        let mut filter = AccessFilter::default();
        let mut rest = Vec::new();
        for (key, value) in pairs.drain(..) {
            match key.as_str() {
                "from" => filter.from = Some(parse_time("from", &value)?),
                "to" => filter.to = Some(parse_time("to", &value)?),
                "user" => filter.user = Some(value),
                "path_prefix" => filter.path_prefix = Some(value),
                "status" => {
                    filter.status = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|s| (100..600).contains(s))
                            .ok_or_else(|| {
                                AuditError::InvalidQuery(
                                    "status must be an HTTP status code".into(),
                                )
                            })?,
                    )
                }
                _ => rest.push((key, value)),
            }
        }
        *pairs = rest;
        Ok(filter)
    }
}

/// `(occurred_at, id)` of the row a page continues from.
pub type AccessCursor = (String, String);

/// Rows matching `filter`; newest first, or oldest first (exports).
pub async fn list(
    tx: &mut ReadTx,
    tenant_id: &str,
    filter: &AccessFilter,
    after: Option<&AccessCursor>,
    newest_first: bool,
    limit: i64,
) -> Result<Vec<AccessEntry>, AuditError> {
    let mut sql = Sql::new(
        "SELECT id, occurred_at, tenant_id, actor_type, actor_id, actor_email, method, route, \
         path, activity, status, latency_us, ip, user_agent, request_id, app_version \
         FROM access_log WHERE tenant_id = $1",
        vec![tenant_id.to_owned()],
    );
    let clauses = [
        (" AND occurred_at >= ?", &filter.from),
        (" AND occurred_at < ?", &filter.to),
        // Prefix match without LIKE wildcards: compare the leading substring.
        (" AND substr(path, 1, length(?)) = ?", &filter.path_prefix),
        (" AND (actor_id = ? OR actor_email = ?)", &filter.user),
    ];
    for (template, value) in clauses {
        if let Some(value) = value {
            sql.bind(template, value.clone());
        }
    }
    if let Some(status) = filter.status {
        sql.push(&format!(" AND status = {status}"));
    }
    for grant in &filter.sealed_grants {
        sql.bind(
            " AND NOT (actor_type = 'support' AND actor_id = ?)",
            grant.clone(),
        );
    }
    if let Some(cursor) = after {
        sql.after("occurred_at", newest_first, cursor);
    }
    let order = if newest_first { "DESC" } else { "ASC" };
    sql.push(&format!(
        " ORDER BY occurred_at {order}, id {order} LIMIT {limit}"
    ));
    let rows = sql.fetch_all(tx.conn()).await?;
    rows.iter().map(entry_from_row).collect()
}

fn entry_from_row(row: &db::Row) -> Result<AccessEntry, AuditError> {
    Ok(AccessEntry {
        id: row.try_get(0)?,
        occurred_at: row.try_get(1)?,
        tenant_id: row.try_get(2)?,
        actor_type: row.try_get(3)?,
        actor_id: row.try_get(4)?,
        actor_email: row.try_get(5)?,
        method: row.try_get(6)?,
        route: row.try_get(7)?,
        path: row.try_get(8)?,
        activity: row.try_get(9)?,
        status: row.try_get(10)?,
        latency_us: row.try_get(11)?,
        ip: row.try_get(12)?,
        user_agent: row.try_get(13)?,
        request_id: row.try_get(14)?,
        app_version: row.try_get(15)?,
    })
}

/// The tenant's access log matching `filter`, oldest first, as chunks of
/// JSON Lines or CSV.
pub fn stream(
    store: Store,
    scope: TenantScope,
    filter: AccessFilter,
    format: Format,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static {
    paged_stream::<AccessEntry, _, _>(format, None, move |after, limit| {
        let (store, scope, filter) = (store.clone(), scope.clone(), filter.clone());
        async move {
            let mut tx = store.read(&scope).await?;
            list(
                &mut tx,
                scope.id_str(),
                &filter,
                after.as_ref(),
                false,
                limit,
            )
            .await
        }
    })
}

impl Exportable for AccessEntry {
    type Cursor = Option<AccessCursor>;
    const CSV_COLUMNS: &'static [&'static str] = &[
        "occurred_at",
        "actor_type",
        "actor_id",
        "actor_email",
        "method",
        "route",
        "path",
        "activity",
        "status",
        "latency_us",
        "ip",
        "user_agent",
        "request_id",
        "app_version",
        "id",
    ];

    fn cursor(&self) -> Self::Cursor {
        Some((self.occurred_at.clone(), self.id.clone()))
    }

    fn csv_row(&self, out: &mut String) {
        let status = self.status.to_string();
        let latency = self.latency_us.to_string();
        let cells = [
            Some(self.occurred_at.as_str()),
            Some(self.actor_type.as_str()),
            self.actor_id.as_deref(),
            self.actor_email.as_deref(),
            Some(self.method.as_str()),
            self.route.as_deref(),
            Some(self.path.as_str()),
            Some(self.activity.as_str()),
            Some(status.as_str()),
            Some(latency.as_str()),
            self.ip.as_deref(),
            self.user_agent.as_deref(),
            Some(self.request_id.as_str()),
            Some(self.app_version.as_str()),
            Some(self.id.as_str()),
        ];
        write_csv_line(cells.into_iter(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AccessEntry {
        AccessEntry {
            id: "r".into(),
            occurred_at: crate::clock::now(),
            tenant_id: None,
            actor_type: "anonymous".into(),
            actor_id: None,
            actor_email: None,
            method: "GET".into(),
            route: None,
            path: "/".into(),
            activity: "read".into(),
            status: 404,
            latency_us: 1,
            ip: None,
            user_agent: None,
            request_id: "q".into(),
            app_version: crate::VERSION.into(),
        }
    }

    #[test]
    fn rows_a_full_buffer_drops_are_counted_never_silently_lost() {
        // A buffer of one that nobody drains: the second and third rows drop.
        let (sender, _receiver) = mpsc::channel(1);
        let logger = AccessLogger {
            sender,
            dropped: Arc::default(),
        };
        let before = crate::metrics::get().access_log_dropped.get();
        for _ in 0..3 {
            logger.record(entry());
        }
        assert_eq!(logger.dropped.load(Ordering::SeqCst), 2);
        assert!(crate::metrics::get().access_log_dropped.get() >= before + 2);
        assert_eq!(logger.queued(), 1);
    }

    #[test]
    fn activities_follow_the_method_and_auth_routes() {
        assert_eq!(activity("GET", Some("/api/v1/users")), "read");
        assert_eq!(
            activity("POST", Some("/api/v1/collections/{name}/records")),
            "create"
        );
        assert_eq!(activity("PATCH", None), "update");
        assert_eq!(activity("DELETE", None), "delete");
        assert_eq!(activity("POST", Some("/api/v1/auth/login")), "auth");
        assert_eq!(activity("OPTIONS", None), "other");
    }
}
