//! The data layer: the one small interface every domain reads and writes
//! through, implemented natively per backend (DESIGN.md "Data layer").
//!
//! * SQLite runs on `rusqlite`, in the calling thread: the writer's own
//!   connection on the writer's thread, and pooled read-only connections in
//!   the request's thread. There is no worker thread to hand statements to
//!   and back, which is what bounded write throughput through sqlx (every
//!   statement of a job was a round trip to it). Statements are prepared
//!   once per connection and cached.
//! * PostgreSQL runs on sqlx's own Postgres driver (prepared statements are
//!   cached per connection by the driver). Point reads run on session
//!   readers ([`PgReaders`]) outside any transaction, one round trip each;
//!   the writer sends a job's statements with their values as typed
//!   literals, several in one round trip ([`Conn::execute_prepared_then`]).
//!
//! The surface mirrors the few calls the domains need — [`query`],
//! [`query_scalar`], [`query_as`] with `bind`, `execute`, `fetch_one`,
//! `fetch_optional`, `fetch_all` — over a [`Conn`], and typed [`Row`]s.
//! Placeholders are numbered `$1`, `$2`, … on both backends (SQLite takes
//! `$1` as a parameter named "$1", the same name wherever it recurs). Where
//! the dialects differ, the owning domain keeps both texts side by side and
//! picks by [`super::Backend`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgRow, PgTypeInfo};
use sqlx::{Arguments, Column, Row as _, TypeInfo};

/// Prepared statements kept per SQLite connection.
const STATEMENTS: usize = 64;

/// Everything that can go wrong below the domains.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Postgres(#[from] sqlx::Error),
    #[error("no rows returned where one was expected")]
    RowNotFound,
    #[error("no column {0:?} in the result")]
    ColumnNotFound(String),
    #[error("column {column:?}: expected {expected}, found {found}")]
    Decode {
        column: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("column {column:?} has database type {type_name}, which the data layer does not read")]
    UnsupportedType { column: String, type_name: String },
}

impl Error {
    /// Whether this is a unique-constraint violation on `table`. PostgreSQL
    /// names the table; SQLite says "UNIQUE constraint failed: table.col, …".
    pub fn is_unique_violation_on(&self, table: &str) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, Some(message))) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
                    && message
                        .strip_prefix("UNIQUE constraint failed: ")
                        .and_then(|columns| columns.strip_prefix(table))
                        .is_some_and(|rest| rest.starts_with('.'))
            }
            Error::Postgres(sqlx::Error::Database(db)) => {
                db.is_unique_violation() && db.table() == Some(table)
            }
            _ => false,
        }
    }

    /// Whether the database refused a NULL in `table.column` (SQLite's
    /// "NOT NULL constraint failed: table.column"; PostgreSQL's 23502).
    pub fn is_not_null_violation_of(&self, table: &str, column: &str) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, Some(message))) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
                    && message
                        .strip_prefix("NOT NULL constraint failed: ")
                        .is_some_and(|rest| rest == format!("{table}.{column}"))
            }
            Error::Postgres(sqlx::Error::Database(db)) => {
                db.code().as_deref() == Some("23502")
                    && db.table() == Some(table)
                    && db.message().contains(&format!("\"{column}\""))
            }
            _ => false,
        }
    }
}

/// The kind of a value, for typed NULLs (PostgreSQL wants a NULL's type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
    Blob,
    Bool,
}

/// A bound parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Null(Kind),
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
}

/// What can be bound as a parameter.
pub trait Bind {
    const KIND: Kind;
    fn into_param(self) -> Param;
}

macro_rules! bind_as {
    ($kind:ident, $variant:ident, $($t:ty => $conv:expr),+ $(,)?) => {$(
        impl Bind for $t {
            const KIND: Kind = Kind::$kind;
            fn into_param(self) -> Param {
                #[allow(clippy::redundant_closure_call)]
                Param::$variant(($conv)(self))
            }
        }
    )+};
}

bind_as!(Int, Int,
    i64 => |v| v,
    i32 => i64::from,
    u32 => i64::from,
    i16 => i64::from,
    u8 => i64::from,
);
bind_as!(Real, Real, f64 => |v| v);
bind_as!(Bool, Bool, bool => |v| v);
bind_as!(Text, Text,
    String => |v| v,
    &str => str::to_owned,
    &String => String::clone,
    &&str => |v: &&str| (*v).to_owned(),
    std::borrow::Cow<'_, str> => std::borrow::Cow::into_owned,
);
bind_as!(Blob, Blob,
    Vec<u8> => |v| v,
    &[u8] => <[u8]>::to_vec,
    &Vec<u8> => Vec::clone,
);

impl<T: Bind> Bind for Option<T> {
    const KIND: Kind = T::KIND;
    fn into_param(self) -> Param {
        match self {
            Some(value) => value.into_param(),
            None => Param::Null(T::KIND),
        }
    }
}

impl<T: Bind + Clone> Bind for &Option<T> {
    const KIND: Kind = T::KIND;
    fn into_param(self) -> Param {
        self.clone().into_param()
    }
}

impl Bind for Param {
    const KIND: Kind = Kind::Text;
    fn into_param(self) -> Param {
        self
    }
}

/// A value read from a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
}

impl Value {
    fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
            Value::Bool(_) => "boolean",
        }
    }
}

/// What a column can be read as.
pub trait Decode: Sized {
    const EXPECTED: &'static str;
    /// `None` when the value is not of this type.
    fn decode(value: &Value) -> Option<Self>;
}

impl Decode for String {
    const EXPECTED: &'static str = "text";
    fn decode(value: &Value) -> Option<Self> {
        match value {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl Decode for i64 {
    const EXPECTED: &'static str = "integer";
    fn decode(value: &Value) -> Option<Self> {
        match value {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl Decode for i32 {
    const EXPECTED: &'static str = "32-bit integer";
    fn decode(value: &Value) -> Option<Self> {
        i64::decode(value).and_then(|i| i32::try_from(i).ok())
    }
}

impl Decode for f64 {
    const EXPECTED: &'static str = "real";
    fn decode(value: &Value) -> Option<Self> {
        match value {
            Value::Real(r) => Some(*r),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl Decode for bool {
    const EXPECTED: &'static str = "boolean";
    fn decode(value: &Value) -> Option<Self> {
        match value {
            Value::Bool(b) => Some(*b),
            // SQLite keeps booleans as 0 and 1.
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
}

impl Decode for Vec<u8> {
    const EXPECTED: &'static str = "blob";
    fn decode(value: &Value) -> Option<Self> {
        match value {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn decode(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            other => T::decode(other).map(Some),
        }
    }
}

/// How a column is named in [`Row::try_get`]: by position or by name.
pub trait ColumnIndex {
    fn position(&self, row: &Row) -> Result<usize, Error>;
}

impl ColumnIndex for usize {
    fn position(&self, row: &Row) -> Result<usize, Error> {
        if *self < row.values.len() {
            Ok(*self)
        } else {
            Err(Error::ColumnNotFound(self.to_string()))
        }
    }
}

impl ColumnIndex for &str {
    fn position(&self, row: &Row) -> Result<usize, Error> {
        row.columns
            .iter()
            .position(|c| c == self)
            .ok_or_else(|| Error::ColumnNotFound((*self).to_owned()))
    }
}

/// One result row, read out of the database into owned values.
#[derive(Clone, Debug)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// Roughly what the row's values hold, in bytes.
    pub fn size(&self) -> usize {
        self.values
            .iter()
            .map(|value| match value {
                Value::Text(text) => text.len(),
                Value::Blob(bytes) => bytes.len(),
                _ => 8,
            })
            .sum()
    }

    pub fn try_get<T: Decode, I: ColumnIndex>(&self, index: I) -> Result<T, Error> {
        let i = index.position(self)?;
        let value = &self.values[i];
        T::decode(value).ok_or_else(|| Error::Decode {
            column: self.columns[i].clone(),
            expected: T::EXPECTED,
            found: value.kind_name(),
        })
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every column as text (numbers written out), NULL as `None`.
    pub fn into_texts(self) -> Vec<Option<String>> {
        self.values
            .into_iter()
            .map(|v| match v {
                Value::Null => None,
                Value::Text(s) => Some(s),
                Value::Int(i) => Some(i.to_string()),
                Value::Real(r) => Some(r.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Blob(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            })
            .collect()
    }
}

/// A row read as a typed tuple ([`query_as`]).
pub trait FromRow: Sized {
    fn from_row(row: &Row) -> Result<Self, Error>;
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Decode),+> FromRow for ($($t,)+) {
            fn from_row(row: &Row) -> Result<Self, Error> {
                Ok(($(row.try_get::<$t, usize>($i)?,)+))
            }
        }
    };
}
tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5);

/// A connection in use: SQLite's (the writer's own, or a pooled reader in
/// a read transaction) or a PostgreSQL transaction.
pub struct Conn(ConnKind);

enum ConnKind {
    Sqlite(SqliteConn),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    /// A PostgreSQL connection outside any transaction, with its tenant set
    /// for the session: each statement its own snapshot.
    PgSession(PgSessionConn),
    /// Held while the real connection is lent out (the writer's between
    /// jobs); every use is an error.
    Lent,
}

fn lent() -> Error {
    Error::Postgres(sqlx::Error::Protocol("the connection is lent out".into()))
}

impl Conn {
    pub(super) fn sqlite(conn: rusqlite::Connection) -> Conn {
        Conn(ConnKind::Sqlite(SqliteConn {
            conn: Some(conn),
            home: None,
        }))
    }

    pub(super) fn postgres(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Conn {
        Conn(ConnKind::Postgres(tx))
    }

    /// A stand-in for a connection that is lent out.
    pub(super) fn placeholder() -> Conn {
        Conn(ConnKind::Lent)
    }

    /// Commits a PostgreSQL transaction; SQLite's writer commits its batch
    /// itself, and a reader has nothing to commit.
    pub(super) async fn commit(self) -> Result<(), Error> {
        match self.0 {
            ConnKind::Postgres(tx) => Ok(tx.commit().await?),
            ConnKind::Sqlite(_) | ConnKind::PgSession(_) => Ok(()),
            ConnKind::Lent => Err(lent()),
        }
    }

    /// Tells every node listening on `channel` ([`super::Store::on_announcement`])
    /// about `payload` once this transaction commits (PostgreSQL's NOTIFY).
    /// On SQLite there is one server per database, and nobody to tell.
    pub async fn announce(&mut self, channel: &str, payload: &str) -> Result<(), Error> {
        if let ConnKind::Postgres(_) | ConnKind::PgSession(_) = self.0 {
            query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(self)
                .await?;
        }
        Ok(())
    }

    /// Runs statements without parameters, separated by `;`.
    /// (Boxed: the driver's future is `Send` for every lifetime only once
    /// its lifetimes are fixed, which a spawned writer task needs.)
    pub fn execute_batch<'a>(
        &'a mut self,
        sql: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            match &mut self.0 {
                ConnKind::Sqlite(conn) => Ok(conn.get().execute_batch(sql)?),
                ConnKind::Postgres(tx) => {
                    let conn: &mut sqlx::PgConnection = tx;
                    // No parameters: the simple query protocol, which takes
                    // several statements in one round trip.
                    sqlx::Executor::execute(conn, sql).await?;
                    Ok(())
                }
                ConnKind::PgSession(session) => {
                    let conn = session.start()?;
                    let result = sqlx::Executor::execute(conn, sql).await;
                    session.done(result.map(|_| ()).map_err(Error::from))
                }
                ConnKind::Lent => Err(lent()),
            }
        })
    }

    /// PostgreSQL: runs `sql` with `params`, then the statements without
    /// parameters in `then`, all in one round trip (the simple protocol,
    /// with the values as typed literals: see [`inline_postgres`]); if `sql`
    /// fails, `then` does not run. A statement that cannot be inlined runs
    /// the ordinary way, and `then` after it.
    pub fn execute_then<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
        then: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let ConnKind::Postgres(tx) = &mut self.0 else {
                Query::with(sql, params).execute(self).await?;
                return self.execute_batch(then).await;
            };
            use sqlx::{Executor, Statement};
            // Cached per connection: a round trip only the first time.
            let statement = (&mut **tx).prepare(sql).await?;
            let declared: &[PgTypeInfo] = match statement.parameters() {
                Some(sqlx::Either::Left(types)) => types,
                _ => &[],
            };
            let Some(spots) = placeholders(sql) else {
                Query::with(sql, params).execute(self).await?;
                return self.execute_batch(then).await;
            };
            let text = inline_postgres(sql, &spots, params, declared)?;
            let conn: &mut sqlx::PgConnection = tx;
            conn.execute(format!("{text}; {then}").as_str()).await?;
            Ok(())
        })
    }

    /// [`Conn::execute_then`], with `sql` prepared once per connection as
    /// an SQL-level prepared statement (`PREPARE`), so that PostgreSQL
    /// plans it once and each run sends only `EXECUTE` with the values as
    /// typed literals. `prepared` names the statements this connection
    /// holds (`prepared_statements` reads them); it learns the new ones.
    pub fn execute_prepared_then<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
        then: &'a str,
        prepared: &'a mut std::collections::HashSet<String>,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let ConnKind::Postgres(tx) = &mut self.0 else {
                return self.execute_then(sql, params, then).await;
            };
            use sqlx::{Executor, Statement};
            let statement = (&mut **tx).prepare(sql).await?;
            let declared: Vec<PgTypeInfo> = match statement.parameters() {
                Some(sqlx::Either::Left(types)) => types.to_vec(),
                _ => return self.execute_then(sql, params, then).await,
            };
            if declared.len() != params.len() {
                return self.execute_then(sql, params, then).await;
            }
            let name = prepared_name(sql);
            let conn: &mut sqlx::PgConnection = tx;
            if !prepared.contains(&name) {
                conn.execute(format!("PREPARE {name} AS {sql}").as_str())
                    .await?;
                prepared.insert(name.clone());
            }
            let mut arguments = Vec::with_capacity(params.len());
            for (param, ty) in params.into_iter().zip(&declared) {
                arguments.push(pg_literal(&postgres_param(param, Some(ty))?)?);
            }
            conn.execute(format!("EXECUTE {name}({}); {then}", arguments.join(", ")).as_str())
                .await?;
            Ok(())
        })
    }

    /// The SQL-level prepared statements of this connection
    /// ([`Conn::execute_prepared_then`]); none on SQLite.
    pub async fn prepared_statements(
        &mut self,
    ) -> Result<std::collections::HashSet<String>, Error> {
        if !matches!(self.0, ConnKind::Postgres(_)) {
            return Ok(Default::default());
        }
        let names: Option<String> = query_scalar(
            "SELECT string_agg(name, ',') FROM pg_prepared_statements WHERE name LIKE 'sr\\_%'",
        )
        .fetch_one(self)
        .await?;
        Ok(names
            .unwrap_or_default()
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// SQLite: runs each statement in turn, each binding the parameters
    /// it names out of the shared `params`; stops at the first failure.
    pub(super) fn execute_each(&mut self, parts: &[String], params: &[Param]) -> Result<(), Error> {
        let ConnKind::Sqlite(conn) = &mut self.0 else {
            return Err(Error::Postgres(sqlx::Error::Protocol(
                "separate statements are for SQLite; PostgreSQL takes one combined statement"
                    .into(),
            )));
        };
        let conn = conn.get();
        for part in parts {
            let mut statement = conn.prepare_cached(part)?;
            sqlite_bind(&mut statement, params)?;
            statement.raw_execute()?;
        }
        Ok(())
    }

    async fn run(&mut self, sql: &str, params: Vec<Param>, want: Want) -> Result<Outcome, Error> {
        match &mut self.0 {
            ConnKind::Sqlite(conn) => {
                // The text only: values are bound, never part of it, so a
                // debug log of statements carries no secret (AUD-3). The
                // PostgreSQL driver's statement log is off: the writer inlines
                // values in its statement texts (see `super::Store`).
                tracing::debug!(target: "strongroom::db", statement = sql, "statement");
                sqlite_run(conn.get(), sql, &params, want)
            }
            ConnKind::Postgres(tx) => postgres_run(tx, sql, params, want).await,
            ConnKind::PgSession(session) => {
                let conn = session.start()?;
                let result = postgres_run(conn, sql, params, want).await;
                session.done(result)
            }
            ConnKind::Lent => Err(lent()),
        }
    }
}

#[derive(Clone, Copy)]
enum Want {
    Nothing,
    One,
    All,
    /// Rows until they hold this many bytes (the row that reaches it
    /// included), so that a page of large rows stays bounded in memory.
    Bytes(usize),
}

enum Outcome {
    Affected(u64),
    Rows(Vec<Row>),
}

impl Outcome {
    fn rows(self) -> Vec<Row> {
        match self {
            Outcome::Rows(rows) => rows,
            Outcome::Affected(_) => Vec::new(),
        }
    }
}

/// What `execute` reports.
#[derive(Debug)]
pub struct Done {
    rows_affected: u64,
}

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// A statement and its parameters.
#[must_use = "a query does nothing until it is executed or fetched"]
pub struct Query<'q> {
    sql: std::borrow::Cow<'q, str>,
    params: Vec<Param>,
}

pub fn query<'q>(sql: impl Into<std::borrow::Cow<'q, str>>) -> Query<'q> {
    Query {
        sql: sql.into(),
        params: Vec::new(),
    }
}

/// A query read as one column's values.
pub fn query_scalar<'q, T: Decode>(sql: impl Into<std::borrow::Cow<'q, str>>) -> Mapped<'q, T> {
    Mapped {
        query: query(sql),
        map: |row| row.try_get(0),
    }
}

/// A query read as typed tuples.
pub fn query_as<'q, T: FromRow>(sql: impl Into<std::borrow::Cow<'q, str>>) -> Mapped<'q, T> {
    Mapped {
        query: query(sql),
        map: T::from_row,
    }
}

impl<'q> Query<'q> {
    /// A statement whose parameters are already collected.
    pub fn with(sql: impl Into<std::borrow::Cow<'q, str>>, params: Vec<Param>) -> Query<'q> {
        Query {
            sql: sql.into(),
            params,
        }
    }

    pub fn bind(mut self, value: impl Bind) -> Self {
        self.params.push(value.into_param());
        self
    }

    pub async fn execute(self, conn: &mut Conn) -> Result<Done, Error> {
        match conn.run(&self.sql, self.params, Want::Nothing).await? {
            Outcome::Affected(rows_affected) => Ok(Done { rows_affected }),
            Outcome::Rows(_) => Ok(Done { rows_affected: 0 }),
        }
    }

    pub async fn fetch_all(self, conn: &mut Conn) -> Result<Vec<Row>, Error> {
        Ok(conn.run(&self.sql, self.params, Want::All).await?.rows())
    }

    /// The rows, read one by one until they hold `max_bytes` (values'
    /// text and bytes; the row that reaches it is kept and the rest are
    /// never held), and whether that cut the result short.
    pub async fn fetch_within(
        self,
        conn: &mut Conn,
        max_bytes: usize,
    ) -> Result<(Vec<Row>, bool), Error> {
        let rows = conn
            .run(&self.sql, self.params, Want::Bytes(max_bytes))
            .await?
            .rows();
        let cut = rows.iter().map(Row::size).sum::<usize>() >= max_bytes;
        Ok((rows, cut))
    }

    pub async fn fetch_optional(self, conn: &mut Conn) -> Result<Option<Row>, Error> {
        Ok(conn
            .run(&self.sql, self.params, Want::One)
            .await?
            .rows()
            .into_iter()
            .next())
    }

    pub async fn fetch_one(self, conn: &mut Conn) -> Result<Row, Error> {
        self.fetch_optional(conn).await?.ok_or(Error::RowNotFound)
    }
}

/// A query whose rows are read as `T` ([`query_scalar`], [`query_as`]).
pub struct Mapped<'q, T> {
    query: Query<'q>,
    map: fn(&Row) -> Result<T, Error>,
}

impl<T> Mapped<'_, T> {
    pub fn bind(mut self, value: impl Bind) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub async fn fetch_one(self, conn: &mut Conn) -> Result<T, Error> {
        (self.map)(&self.query.fetch_one(conn).await?)
    }

    pub async fn fetch_optional(self, conn: &mut Conn) -> Result<Option<T>, Error> {
        match self.query.fetch_optional(conn).await? {
            Some(row) => Ok(Some((self.map)(&row)?)),
            None => Ok(None),
        }
    }

    pub async fn fetch_all(self, conn: &mut Conn) -> Result<Vec<T>, Error> {
        let map = self.map;
        self.query.fetch_all(conn).await?.iter().map(map).collect()
    }
}

// ---------------------------------------------------------------- SQLite

/// A SQLite connection, returned to its pool (if it has one) when dropped.
struct SqliteConn {
    conn: Option<rusqlite::Connection>,
    home: Option<Arc<SqliteReaders>>,
}

impl SqliteConn {
    fn get(&mut self) -> &rusqlite::Connection {
        // Only Drop takes the connection out.
        self.conn
            .as_ref()
            .expect("a SQLite connection in use is present")
    }
}

impl Drop for SqliteConn {
    fn drop(&mut self) {
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            home.put_back(conn);
        }
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Null(_) => ToSqlOutput::Borrowed(ValueRef::Null),
            Param::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Param::Real(r) => ToSqlOutput::Borrowed(ValueRef::Real(*r)),
            Param::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Param::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
        })
    }
}

/// Binds `params` to a prepared statement by the numbers in its
/// placeholder names (`$3` takes `params[2]`); a statement may use a subset.
pub(super) fn sqlite_bind(
    statement: &mut rusqlite::CachedStatement<'_>,
    params: &[Param],
) -> Result<(), rusqlite::Error> {
    for index in 1..=statement.parameter_count() {
        let name = statement.parameter_name(index).unwrap_or("");
        let number: usize = name
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))?;
        let value = params
            .get(number.wrapping_sub(1))
            .ok_or(rusqlite::Error::InvalidParameterCount(number, params.len()))?;
        statement.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

fn sqlite_run(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Param],
    want: Want,
) -> Result<Outcome, Error> {
    let mut statement = conn.prepare_cached(sql)?;
    sqlite_bind(&mut statement, params)?;
    if let Want::Nothing = want
        && statement.column_count() == 0
    {
        return Ok(Outcome::Affected(statement.raw_execute()? as u64));
    }
    let columns: Arc<[String]> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    let mut held = 0;
    while let Some(row) = rows.next()? {
        let values = (0..columns.len())
            .map(|i| sqlite_value(row.get_ref(i)?))
            .collect::<Result<Vec<_>, rusqlite::Error>>()?;
        let row = Row {
            columns: columns.clone(),
            values,
        };
        held += row.size();
        out.push(row);
        match want {
            Want::One => break,
            Want::Bytes(max) if held >= max => break,
            _ => {}
        }
    }
    Ok(Outcome::Rows(out))
}

fn sqlite_value(value: ValueRef<'_>) -> Result<Value, rusqlite::Error> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(rusqlite::Error::Utf8Error)?
                .to_owned(),
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}

/// Opens the writing connection: WAL, and FULL sync so that a commit is on
/// disk before it is acknowledged (invariant 5).
pub(super) fn open_sqlite_writer(path: &std::path::Path) -> Result<rusqlite::Connection, Error> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    Ok(conn)
}

/// Idle readers kept at most; more may be open while requests overlap.
const KEEP_IDLE: usize = 16;

/// Read-only SQLite connections, opened on demand and kept when idle.
/// They are opened read-only and with `query_only`, so nothing can write
/// through them (invariant 2).
pub(super) struct SqliteReaders {
    path: std::path::PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl SqliteReaders {
    pub(super) fn new(path: std::path::PathBuf) -> Arc<SqliteReaders> {
        Arc::new(SqliteReaders {
            path,
            idle: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn open(&self) -> Result<rusqlite::Connection, rusqlite::Error> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Under WAL a reader waits only while a checkpoint resets the log,
        // which takes microseconds; the bound keeps a request thread from
        // waiting long if something is wrong.
        conn.busy_timeout(Duration::from_millis(500))?;
        conn.execute_batch("PRAGMA query_only=ON; PRAGMA foreign_keys=ON;")?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(conn)
    }

    fn take(&self) -> Result<rusqlite::Connection, Error> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => Ok(self.open()?),
        }
    }

    fn put_back(&self, conn: rusqlite::Connection) {
        // A reader left inside a transaction would pin an old snapshot.
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < KEEP_IDLE
        {
            idle.push(conn);
        }
    }

    /// A reader inside a read transaction: one consistent snapshot.
    pub(super) fn begin(self: &Arc<Self>) -> Result<Conn, Error> {
        let conn = self.take()?;
        let mut held = SqliteConn {
            conn: Some(conn),
            home: Some(self.clone()),
        };
        held.get().execute_batch("BEGIN")?;
        Ok(Conn(ConnKind::Sqlite(held)))
    }

    /// A reader outside any transaction, for one statement.
    pub(super) fn single(self: &Arc<Self>) -> Result<Conn, Error> {
        let conn = self.take()?;
        Ok(Conn(ConnKind::Sqlite(SqliteConn {
            conn: Some(conn),
            home: Some(self.clone()),
        })))
    }
}

// ------------------------------------------- PostgreSQL session readers

/// What every application connection to PostgreSQL runs first: act as
/// the role RLS binds, and read string literals the standard way (the
/// writer inlines values as literals, which are exact only so).
pub(super) const PG_SESSION_SETUP: &str =
    "SET ROLE strongroom_app; SET standard_conforming_strings = on";

/// PostgreSQL connections for reads of one statement each, outside any
/// transaction: the tenant RLS checks is set for the session
/// (`set_config(…, false)`) and remembered beside the connection, so a
/// request of the same tenant reads in one round trip, with no `BEGIN`,
/// no `ROLLBACK` and no liveness ping. The sessions are read-only
/// (`default_transaction_read_only`): nothing writes through them
/// (invariant 2). A connection whose statement did not finish (a dropped
/// request, a broken socket) is closed rather than reused, so a remembered
/// tenant is always the session's.
pub(super) struct PgReaders {
    options: sqlx::postgres::PgConnectOptions,
    idle: Mutex<Vec<TaggedPg>>,
    permits: Arc<tokio::sync::Semaphore>,
}

struct TaggedPg {
    conn: sqlx::PgConnection,
    /// The tenant the session's `app.tenant_id` names (none: empty).
    tenant: Option<uuid::Uuid>,
}

impl PgReaders {
    pub(super) fn new(options: sqlx::postgres::PgConnectOptions, max: u32) -> Arc<PgReaders> {
        Arc::new(PgReaders {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(max.max(1) as usize)),
        })
    }

    async fn open(&self) -> Result<TaggedPg, Error> {
        use sqlx::{ConnectOptions, Executor};
        let mut conn = self.options.connect().await?;
        conn.execute(
            format!("{PG_SESSION_SETUP}; SET default_transaction_read_only = on").as_str(),
        )
        .await?;
        Ok(TaggedPg { conn, tenant: None })
    }

    /// A session reading as `tenant`; at most `max` are out at once.
    pub(super) async fn session(
        self: &Arc<Self>,
        tenant: Option<uuid::Uuid>,
    ) -> Result<Conn, Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Postgres(sqlx::Error::PoolClosed))?;
        let idle = self.idle.lock().ok().and_then(|mut idle| {
            // The same tenant's session first: it needs no setting.
            let at = idle
                .iter()
                .rposition(|c| c.tenant == tenant)
                .or(idle.len().checked_sub(1))?;
            Some(idle.swap_remove(at))
        });
        let tagged = match idle {
            Some(tagged) => tagged,
            None => self.open().await?,
        };
        let mut session = PgSessionConn {
            tagged: Some(tagged),
            home: self.clone(),
            _permit: permit,
            finished: true,
        };
        if session.tagged.as_ref().is_some_and(|t| t.tenant != tenant) {
            let setting = tenant.map(|t| t.to_string()).unwrap_or_default();
            let conn = session.start()?;
            let result = sqlx::query("SELECT set_config('app.tenant_id', $1, false)")
                .bind(setting)
                .execute(conn)
                .await;
            session.done(result.map_err(Error::from))?;
            if let Some(tagged) = session.tagged.as_mut() {
                tagged.tenant = tenant;
            }
        }
        Ok(Conn(ConnKind::PgSession(session)))
    }

    fn put_back(&self, tagged: TaggedPg) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(tagged);
        }
    }
}

/// A session reader in use; back to its pool when dropped, if its last
/// statement finished.
pub(super) struct PgSessionConn {
    tagged: Option<TaggedPg>,
    home: Arc<PgReaders>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    finished: bool,
}

impl PgSessionConn {
    /// The connection, for one statement: unless [`PgSessionConn::done`]
    /// hears how it ended, the connection is not reused.
    fn start(&mut self) -> Result<&mut sqlx::PgConnection, Error> {
        self.finished = false;
        match self.tagged.as_mut() {
            Some(tagged) => Ok(&mut tagged.conn),
            None => Err(lent()),
        }
    }

    /// The statement ended: a success or an error the server reported
    /// leaves the session usable; anything else (I/O, protocol) does not.
    fn done<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        self.finished = matches!(
            &result,
            Ok(_) | Err(Error::Postgres(sqlx::Error::Database(_)))
        );
        result
    }
}

impl Drop for PgSessionConn {
    fn drop(&mut self) {
        if let Some(tagged) = self.tagged.take()
            && self.finished
        {
            self.home.put_back(tagged);
        }
    }
}

// ------------------------------------------------------------ PostgreSQL
//
// Values cross the interface as text, integers, reals, booleans and bytes;
// the columns are native (uuid, timestamptz, jsonb, integer types). Each
// statement is prepared once per connection (the driver caches it) with
// the parameter types left to the server, and every parameter is then
// encoded as the type the server inferred for it: a text id becomes a
// uuid, a stored time a timestamptz. A text that is not a valid value of
// its column's type (an id that is no UUID, from a URL) binds as NULL,
// which matches nothing, as the text would match nothing on SQLite.
// Results come back the same way: uuid and timestamptz as their canonical
// text (`clock::format`), jsonb as its JSON text.

/// One parameter, encoded as the PostgreSQL type the statement declares.
enum PgParam {
    Null(PgTypeInfo),
    Int8(i64),
    Int4(i32),
    Int2(i16),
    Float8(f64),
    Float4(f32),
    Bool(bool),
    Bytea(Vec<u8>),
    Text(String),
    Uuid(uuid::Uuid),
    /// Microseconds since 2000-01-01T00:00:00Z, PostgreSQL's epoch.
    Timestamptz(i64),
    /// JSON text; `jsonb` prefixes its binary form with a version byte.
    Json {
        text: String,
        binary_version: bool,
    },
}

/// PostgreSQL's epoch, 2000-01-01T00:00:00Z, in Unix seconds.
const PG_EPOCH_UNIX: i64 = 946_684_800;

impl PgParam {
    fn type_info(&self) -> PgTypeInfo {
        // The built-in types' fixed OIDs (pg_type.dat), so no name lookup.
        let oid = match self {
            PgParam::Null(ty) => return ty.clone(),
            PgParam::Int8(_) => 20,
            PgParam::Int4(_) => 23,
            PgParam::Int2(_) => 21,
            PgParam::Float8(_) => 701,
            PgParam::Float4(_) => 700,
            PgParam::Bool(_) => 16,
            PgParam::Bytea(_) => 17,
            PgParam::Text(_) => 25,
            PgParam::Uuid(_) => 2950,
            PgParam::Timestamptz(_) => 1184,
            PgParam::Json {
                binary_version: true,
                ..
            } => 3802,
            PgParam::Json { .. } => 114,
        };
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(oid))
    }
}

impl sqlx::Type<sqlx::Postgres> for PgParam {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(25))
    }

    fn compatible(_: &PgTypeInfo) -> bool {
        true
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for PgParam {
    fn produces(&self) -> Option<PgTypeInfo> {
        Some(self.type_info())
    }

    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self {
            PgParam::Null(_) => return Ok(sqlx::encode::IsNull::Yes),
            PgParam::Int8(v) => buf.extend_from_slice(&v.to_be_bytes()),
            PgParam::Int4(v) => buf.extend_from_slice(&v.to_be_bytes()),
            PgParam::Int2(v) => buf.extend_from_slice(&v.to_be_bytes()),
            PgParam::Float8(v) => buf.extend_from_slice(&v.to_be_bytes()),
            PgParam::Float4(v) => buf.extend_from_slice(&v.to_be_bytes()),
            PgParam::Bool(v) => buf.push(u8::from(*v)),
            PgParam::Bytea(v) => buf.extend_from_slice(v),
            PgParam::Text(v) => buf.extend_from_slice(v.as_bytes()),
            PgParam::Uuid(v) => buf.extend_from_slice(v.as_bytes()),
            PgParam::Timestamptz(v) => buf.extend_from_slice(&v.to_be_bytes()),
            PgParam::Json {
                text,
                binary_version,
            } => {
                if *binary_version {
                    buf.push(1);
                }
                buf.extend_from_slice(text.as_bytes());
            }
        }
        Ok(sqlx::encode::IsNull::No)
    }
}

/// `param` as the type `ty` the server declared for it.
fn postgres_param(param: Param, ty: Option<&PgTypeInfo>) -> Result<PgParam, Error> {
    let Some(ty) = ty else {
        // No declaration (a statement the server did not describe): the
        // value's own type.
        return Ok(match param {
            Param::Null(_) => PgParam::Null(PgTypeInfo::with_oid(sqlx::postgres::types::Oid(25))),
            Param::Int(i) => PgParam::Int8(i),
            Param::Real(r) => PgParam::Float8(r),
            Param::Text(s) => PgParam::Text(s),
            Param::Blob(b) => PgParam::Bytea(b),
            Param::Bool(b) => PgParam::Bool(b),
        });
    };
    let name = ty.name();
    let mismatch = |what: &str| {
        Error::Postgres(sqlx::Error::Protocol(format!(
            "a parameter of type {name} was given {what}"
        )))
    };
    let out_of_range = || mismatch("an integer out of its range");
    Ok(match (param, name) {
        (Param::Null(_), _) => PgParam::Null(ty.clone()),
        (Param::Int(i), "INT8") => PgParam::Int8(i),
        (Param::Int(i), "INT4") => PgParam::Int4(i32::try_from(i).map_err(|_| out_of_range())?),
        (Param::Int(i), "INT2") => PgParam::Int2(i16::try_from(i).map_err(|_| out_of_range())?),
        #[allow(clippy::cast_precision_loss)]
        (Param::Int(i), "FLOAT8") => PgParam::Float8(i as f64),
        (Param::Int(i), "BOOL") => PgParam::Bool(i != 0),
        (Param::Int(i), _) if is_text(name) => PgParam::Text(i.to_string()),
        (Param::Real(r), "FLOAT8") => PgParam::Float8(r),
        #[allow(clippy::cast_possible_truncation)]
        (Param::Real(r), "FLOAT4") => PgParam::Float4(r as f32),
        (Param::Real(r), _) if is_text(name) => PgParam::Text(r.to_string()),
        (Param::Bool(b), "BOOL") => PgParam::Bool(b),
        (Param::Bool(b), "INT8") => PgParam::Int8(i64::from(b)),
        (Param::Blob(b), "BYTEA") => PgParam::Bytea(b),
        (Param::Text(s), "UUID") => match uuid::Uuid::parse_str(&s) {
            Ok(id) => PgParam::Uuid(id),
            Err(_) => PgParam::Null(ty.clone()),
        },
        (Param::Text(s), "TIMESTAMPTZ") => match crate::clock::parse_rfc3339(&s) {
            Some(at) => PgParam::Timestamptz(pg_micros(at)),
            None => PgParam::Null(ty.clone()),
        },
        (Param::Text(text), "JSONB") => PgParam::Json {
            text,
            binary_version: true,
        },
        (Param::Text(text), "JSON") => PgParam::Json {
            text,
            binary_version: false,
        },
        (Param::Text(s), _) if is_text(name) => PgParam::Text(s),
        (Param::Text(s), "INT8") => PgParam::Int8(s.parse().map_err(|_| mismatch("text"))?),
        (other, _) => return Err(mismatch(&format!("{other:?}"))),
    })
}

/// `sql` with each placeholder `$n` replaced by `params[n-1]` as a typed
/// literal of the type the server declared for it (PostgreSQL), for
/// statements sent with others in one simple-protocol round trip.
///
/// The rendering is exact, not an escaping heuristic: the connection runs
/// with `standard_conforming_strings = on` (set on connect, see
/// `super::Store`), where a string literal ends only at a single quote and
/// a doubled one stands for itself; a NUL, which a query text cannot carry
/// (and no PostgreSQL text holds), is refused. Every literal carries its
/// type, and values go through [`postgres_param`] first, so a value reads
/// exactly as the same value bound would (an id that is no UUID is NULL).
/// Statements with other quoting (`E'…'`, dollar quotes) are refused, and
/// the caller sends them the ordinary way.
fn inline_postgres(
    sql: &str,
    spots: &[Placeholder],
    params: Vec<Param>,
    declared: &[PgTypeInfo],
) -> Result<String, Error> {
    let literals = params
        .into_iter()
        .enumerate()
        .map(|(i, param)| postgres_param(param, declared.get(i)).and_then(|p| pg_literal(&p)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out =
        String::with_capacity(sql.len() + literals.iter().map(String::len).sum::<usize>());
    let mut copied = 0;
    for spot in spots {
        let literal = spot
            .number
            .checked_sub(1)
            .and_then(|k| literals.get(k))
            .ok_or_else(|| {
                Error::Postgres(sqlx::Error::Protocol(format!(
                    "placeholder ${} has no parameter",
                    spot.number
                )))
            })?;
        out.push_str(&sql[copied..spot.start]);
        out.push_str(literal);
        copied = spot.end;
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// Where `$n` stands in a statement's text.
#[derive(Debug, PartialEq)]
struct Placeholder {
    start: usize,
    end: usize,
    number: usize,
}

/// The placeholders of `sql`, outside quotes; `None` when its text has
/// quoting or comments this scanner does not follow (`E'…'`, dollar quotes,
/// comments, an unterminated quote), which are then never inlined.
fn placeholders(sql: &str) -> Option<Vec<Placeholder>> {
    let bytes = sql.as_bytes();
    let mut spots = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                let escape_string = quote == b'\''
                    && i > 0
                    && matches!(bytes[i - 1], b'E' | b'e')
                    && !(i > 1 && (bytes[i - 2].is_ascii_alphanumeric() || bytes[i - 2] == b'_'));
                if escape_string {
                    return None;
                }
                // To the closing quote; a doubled quote stays inside.
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return None,
                        Some(&b) if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
                        Some(&b) if b == quote => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => return None,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
            b'$' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits == 0 {
                    return None;
                }
                let number = sql[i + 1..i + 1 + digits].parse().ok()?;
                spots.push(Placeholder {
                    start: i,
                    end: i + 1 + digits,
                    number,
                });
                i += 1 + digits;
            }
            _ => i += 1,
        }
    }
    Some(spots)
}

/// The name an SQL-level prepared statement of `sql` goes by: a digest of
/// its text, so that two texts never share one.
fn prepared_name(sql: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(sql.as_bytes());
    let mut name = String::from("sr_");
    for byte in &digest[..16] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// A string literal (standard conforming: only the quote is special).
fn quoted(text: &str) -> Result<String, Error> {
    if text.contains('\0') {
        return Err(Error::Postgres(sqlx::Error::Protocol(
            "a text value contains a NUL character".into(),
        )));
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

/// One encoded parameter as a literal of its type.
fn pg_literal(param: &PgParam) -> Result<String, Error> {
    Ok(match param {
        PgParam::Null(ty) => match pg_type_name(ty) {
            Some(name) => format!("CAST(NULL AS {name})"),
            None => "NULL".to_owned(),
        },
        PgParam::Int8(v) => format!("CAST({v} AS int8)"),
        PgParam::Int4(v) => format!("CAST({v} AS int4)"),
        PgParam::Int2(v) => format!("CAST({v} AS int2)"),
        PgParam::Float8(v) => format!("CAST('{}' AS float8)", pg_float(*v)),
        PgParam::Float4(v) => format!("CAST('{}' AS float4)", pg_float(f64::from(*v))),
        PgParam::Bool(v) => v.to_string(),
        PgParam::Bytea(v) => {
            let mut hex = String::with_capacity(v.len() * 2);
            for b in v {
                hex.push_str(&format!("{b:02x}"));
            }
            format!("CAST('\\x{hex}' AS bytea)")
        }
        PgParam::Text(v) => format!("CAST({} AS text)", quoted(v)?),
        PgParam::Uuid(v) => format!("CAST('{v}' AS uuid)"),
        PgParam::Timestamptz(micros) => {
            let at = from_pg_micros(*micros).ok_or_else(|| {
                Error::Postgres(sqlx::Error::Protocol("a time out of range".into()))
            })?;
            format!("CAST('{}' AS timestamptz)", crate::clock::format(at))
        }
        PgParam::Json {
            text,
            binary_version,
        } => format!(
            "CAST({} AS {})",
            quoted(text)?,
            if *binary_version { "jsonb" } else { "json" }
        ),
    })
}

/// The SQL name of a built-in type we bind, for a typed NULL.
fn pg_type_name(ty: &PgTypeInfo) -> Option<&'static str> {
    Some(match ty.name() {
        "INT8" => "int8",
        "INT4" => "int4",
        "INT2" => "int2",
        "FLOAT8" => "float8",
        "FLOAT4" => "float4",
        "BOOL" => "bool",
        "BYTEA" => "bytea",
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => "text",
        "UUID" => "uuid",
        "TIMESTAMPTZ" => "timestamptz",
        "JSONB" => "jsonb",
        "JSON" => "json",
        _ => return None,
    })
}

/// A float as PostgreSQL reads it back exactly.
fn pg_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        // Rust prints the shortest text that reads back as the same value.
        format!("{v:e}")
    }
}

fn is_text(name: &str) -> bool {
    matches!(
        name,
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "UNKNOWN" | "CHAR"
    )
}

/// Microseconds since PostgreSQL's epoch.
fn pg_micros(at: time::OffsetDateTime) -> i64 {
    let seconds = at.unix_timestamp() - PG_EPOCH_UNIX;
    seconds * 1_000_000 + i64::from(at.microsecond())
}

fn from_pg_micros(micros: i64) -> Option<time::OffsetDateTime> {
    let seconds = micros.div_euclid(1_000_000) + PG_EPOCH_UNIX;
    let fraction = micros.rem_euclid(1_000_000);
    let at = time::OffsetDateTime::from_unix_timestamp(seconds).ok()?;
    Some(at + time::Duration::microseconds(fraction))
}

async fn postgres_run(
    tx: &mut sqlx::PgConnection,
    sql: &str,
    params: Vec<Param>,
    want: Want,
) -> Result<Outcome, Error> {
    use sqlx::{Executor, Statement};
    // Cached per connection: a round trip only the first time.
    let statement = (&mut *tx).prepare(sql).await?;
    let declared: &[PgTypeInfo] = match statement.parameters() {
        Some(sqlx::Either::Left(types)) => types,
        _ => &[],
    };
    let mut args = PgArguments::default();
    for (i, param) in params.into_iter().enumerate() {
        args.add(postgres_param(param, declared.get(i))?)
            .map_err(sqlx::Error::Encode)?;
    }
    let query = sqlx::query_with(sql, args);
    match want {
        Want::Nothing => {
            let done = query.execute(&mut *tx).await?;
            Ok(Outcome::Affected(done.rows_affected()))
        }
        Want::One => {
            let row = query.fetch_optional(&mut *tx).await?;
            let rows = match row {
                Some(row) => vec![postgres_row(&row, None)?],
                None => Vec::new(),
            };
            Ok(Outcome::Rows(rows))
        }
        Want::Bytes(max) => {
            use futures_util::TryStreamExt;
            let mut rows = query.fetch(&mut *tx);
            let (mut out, mut held, mut columns) = (Vec::new(), 0, None);
            while let Some(row) = rows.try_next().await? {
                let columns = columns
                    .get_or_insert_with(|| postgres_columns(&row))
                    .clone();
                let row = postgres_row(&row, Some(columns))?;
                held += row.size();
                out.push(row);
                if held >= max {
                    break;
                }
            }
            Ok(Outcome::Rows(out))
        }
        Want::All => {
            let rows = query.fetch_all(&mut *tx).await?;
            let columns = rows.first().map(postgres_columns);
            let out = rows
                .iter()
                .map(|row| postgres_row(row, columns.clone()))
                .collect::<Result<_, _>>()?;
            Ok(Outcome::Rows(out))
        }
    }
}

fn postgres_columns(row: &PgRow) -> Arc<[String]> {
    row.columns().iter().map(|c| c.name().to_owned()).collect()
}

fn postgres_row(row: &PgRow, columns: Option<Arc<[String]>>) -> Result<Row, Error> {
    use sqlx::ValueRef as _;
    let columns = columns.unwrap_or_else(|| postgres_columns(row));
    let mut values = Vec::with_capacity(columns.len());
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            values.push(Value::Null);
            continue;
        }
        let type_name = column.type_info().name();
        let unsupported = || Error::UnsupportedType {
            column: column.name().to_owned(),
            type_name: type_name.to_owned(),
        };
        let bytes = raw.as_bytes().map_err(sqlx::Error::Decode)?;
        let fixed = |n: usize| -> Result<&[u8], Error> {
            if bytes.len() == n {
                Ok(bytes)
            } else {
                Err(unsupported())
            }
        };
        let value = match type_name {
            "INT8" => Value::Int(i64::from_be_bytes(
                fixed(8)?.try_into().map_err(|_| unsupported())?,
            )),
            "INT4" => Value::Int(
                i32::from_be_bytes(fixed(4)?.try_into().map_err(|_| unsupported())?).into(),
            ),
            "INT2" => Value::Int(
                i16::from_be_bytes(fixed(2)?.try_into().map_err(|_| unsupported())?).into(),
            ),
            "FLOAT8" => Value::Real(f64::from_be_bytes(
                fixed(8)?.try_into().map_err(|_| unsupported())?,
            )),
            "FLOAT4" => Value::Real(
                f32::from_be_bytes(fixed(4)?.try_into().map_err(|_| unsupported())?).into(),
            ),
            "BOOL" => Value::Bool(fixed(1)?[0] != 0),
            "BYTEA" => Value::Blob(bytes.to_vec()),
            "UUID" => Value::Text(
                uuid::Uuid::from_slice(bytes)
                    .map_err(|_| unsupported())?
                    .to_string(),
            ),
            "TIMESTAMPTZ" | "TIMESTAMP" => {
                let micros = i64::from_be_bytes(fixed(8)?.try_into().map_err(|_| unsupported())?);
                Value::Text(crate::clock::format(
                    from_pg_micros(micros).ok_or_else(unsupported)?,
                ))
            }
            "JSONB" => Value::Text(text_of(bytes.get(1..).ok_or_else(unsupported)?)?),
            "JSON" => Value::Text(text_of(bytes)?),
            name if is_text(name) => Value::Text(text_of(bytes)?),
            // A statement that returns nothing typed (e.g. SELECT of a
            // void function) reads as NULL.
            "VOID" => Value::Null,
            _ => return Err(unsupported()),
        };
        values.push(value);
    }
    Ok(Row { columns, values })
}

fn text_of(bytes: &[u8]) -> Result<String, Error> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|e| Error::Postgres(sqlx::Error::Decode(Box::new(e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spots(sql: &str) -> Option<Vec<usize>> {
        placeholders(sql).map(|spots| spots.into_iter().map(|s| s.number).collect())
    }

    #[test]
    fn placeholders_are_found_outside_quotes_only() {
        assert_eq!(spots("SELECT $1, $12 WHERE a = $2"), Some(vec![1, 12, 2]));
        assert_eq!(spots(r#"SELECT '$1', "$2", 'it''s $3', $4"#), Some(vec![4]));
        assert_eq!(spots("SELECT 'a''' || $1"), Some(vec![1]));
        // Quoting this scanner does not follow is never inlined.
        assert_eq!(spots(r"SELECT E'\' $1'"), None);
        assert_eq!(spots("SELECT $tag$ $1 $tag$"), None);
        assert_eq!(spots("SELECT 1 -- $1"), None);
        assert_eq!(spots("SELECT /* $1 */ 1"), None);
        assert_eq!(spots("SELECT 'open"), None);
        // An identifier ending in e before a quote is not an escape string.
        assert_eq!(spots("SELECT type'x', $1"), Some(vec![1]));
    }

    /// A declared type as the server describes it (by its display name).
    fn ty(name: &'static str) -> PgTypeInfo {
        PgTypeInfo::with_name(name)
    }

    #[test]
    fn values_inline_as_typed_literals_that_read_back_exactly() {
        let sql = "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $1)";
        let spots = placeholders(sql).unwrap();
        let text = inline_postgres(
            sql,
            &spots,
            vec![
                Param::Text(r"it's \\ $2".into()),
                Param::Int(-7),
                Param::Text("not-a-uuid".into()),
                Param::Text("2026-01-02T03:04:05.123456Z".into()),
                Param::Blob(vec![0, 255]),
                Param::Null(Kind::Int),
                Param::Text(r#"{"a": "'"}"#.into()),
            ],
            &[
                ty("TEXT"),
                ty("INT8"),
                ty("UUID"),
                ty("TIMESTAMPTZ"),
                ty("BYTEA"),
                ty("INT8"),
                ty("JSONB"),
            ],
        )
        .unwrap();
        assert_eq!(
            text,
            r#"INSERT INTO t VALUES (CAST('it''s \\ $2' AS text), CAST(-7 AS int8), CAST(NULL AS uuid), CAST('2026-01-02T03:04:05.123456Z' AS timestamptz), CAST('\x00ff' AS bytea), CAST(NULL AS int8), CAST('{"a": "''"}' AS jsonb), CAST('it''s \\ $2' AS text))"#
        );
    }

    #[test]
    fn a_nul_or_a_missing_parameter_is_refused_not_inlined() {
        let sql = "SELECT $1";
        let spots = placeholders(sql).unwrap();
        let nul = vec![Param::Text("a\0b".into())];
        assert!(inline_postgres(sql, &spots, nul, &[ty("TEXT")]).is_err());
        let sql = "SELECT $2";
        let spots = placeholders(sql).unwrap();
        assert!(inline_postgres(sql, &spots, vec![Param::Int(1)], &[ty("INT8")]).is_err());
    }

    #[test]
    fn floats_inline_as_text_postgres_reads_back_to_the_same_value() {
        for v in [0.1, -2.5e-300, 1e300, f64::MAX, f64::MIN_POSITIVE] {
            assert_eq!(pg_float(v).parse::<f64>().unwrap(), v);
        }
        assert_eq!(pg_float(f64::NAN), "NaN");
        assert_eq!(pg_float(f64::NEG_INFINITY), "-Infinity");
    }

    fn memory() -> Conn {
        Conn::sqlite(rusqlite::Connection::open_in_memory().unwrap())
    }

    #[tokio::test]
    async fn numbered_placeholders_bind_by_number_and_repeat() {
        let mut conn = memory();
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER, c BLOB, d INTEGER)")
            .await
            .unwrap();
        query("INSERT INTO t VALUES ($2, $1, $3, $1)")
            .bind(7_i64)
            .bind("x")
            .bind(None::<Vec<u8>>)
            .execute(&mut conn)
            .await
            .unwrap();
        let row = query("SELECT a, b, c, d FROM t WHERE b = $1 AND d = $1")
            .bind(7_i64)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.try_get::<String, _>("a").unwrap(), "x");
        assert_eq!(row.try_get::<i64, _>(1).unwrap(), 7);
        assert_eq!(row.try_get::<Option<Vec<u8>>, _>("c").unwrap(), None);
        let err = row.try_get::<i64, _>("a").unwrap_err();
        assert!(
            err.to_string().contains("expected integer, found text"),
            "{err}"
        );
        assert!(matches!(
            row.try_get::<i64, _>("nope"),
            Err(Error::ColumnNotFound(_))
        ));
    }

    #[tokio::test]
    async fn scalars_tuples_and_affected_rows_read_back() {
        let mut conn = memory();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
            .await
            .unwrap();
        for (k, n) in [("a", 1_i64), ("b", 2)] {
            query("INSERT INTO t VALUES ($1, $2)")
                .bind(k)
                .bind(n)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let total: i64 = query_scalar("SELECT SUM(n) FROM t")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(total, 3);
        let pairs: Vec<(String, i64)> = query_as("SELECT k, n FROM t ORDER BY k")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(pairs, [("a".into(), 1), ("b".into(), 2)]);
        let done = query("UPDATE t SET n = n + 1")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 2);
        let err = query("INSERT INTO t VALUES ($1, $2)")
            .bind("a")
            .bind(9_i64)
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert!(err.is_unique_violation_on("t"), "{err}");
        assert!(!err.is_unique_violation_on("u"), "{err}");
        let err = query("INSERT INTO t VALUES ($1, $2)")
            .bind("c")
            .bind(None::<i64>)
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert!(err.is_not_null_violation_of("t", "n"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_parameter_is_an_error_not_a_null() {
        let mut conn = memory();
        let err = query("SELECT $1, $2")
            .bind(1_i64)
            .fetch_one(&mut conn)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Sqlite(_)), "{err}");
    }
}
