//! Native read-only SQLite connections for the point read every request
//! makes (see [`super::Store::read_text_row`]). They are opened read-only
//! and with `query_only`, so nothing can write through them (invariant 2).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// Idle connections kept at most; more may be open while requests overlap.
const KEEP_IDLE: usize = 8;
/// Prepared statements kept per connection.
const STATEMENTS: usize = 16;

pub(super) struct NativeReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

fn native(e: rusqlite::Error) -> StoreError {
    StoreError::Native(e.to_string())
}

impl NativeReads {
    pub(super) fn new(path: PathBuf) -> NativeReads {
        NativeReads {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The database file.
    pub(super) fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn open(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Under WAL a reader waits only while a checkpoint resets the log,
        // which takes microseconds; the bound keeps a request thread from
        // waiting long if something is wrong.
        conn.busy_timeout(Duration::from_millis(500))?;
        conn.pragma_update(None, "query_only", true)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(conn)
    }

    /// The first row of `sql`, every column as text; `$n` is `binds[n-1]`.
    pub(super) fn text_row(
        &self,
        sql: &str,
        binds: &[&str],
    ) -> Result<Option<Vec<Option<String>>>, StoreError> {
        let taken = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match taken {
            Some(conn) => conn,
            None => self.open().map_err(native)?,
        };
        let row = Self::query(&conn, sql, binds).map_err(native);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < KEEP_IDLE
        {
            idle.push(conn);
        }
        row
    }

    fn query(
        conn: &Connection,
        sql: &str,
        binds: &[&str],
    ) -> Result<Option<Vec<Option<String>>>, rusqlite::Error> {
        let mut statement = conn.prepare_cached(sql)?;
        for (i, value) in binds.iter().enumerate() {
            let name = format!("${}", i + 1);
            let index = statement
                .parameter_index(&name)?
                .ok_or(rusqlite::Error::InvalidParameterName(name))?;
            statement.raw_bind_parameter(index, value)?;
        }
        let columns = statement.column_count();
        let mut rows = statement.raw_query();
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let values = (0..columns)
            .map(|i| row.get::<_, Option<String>>(i))
            .collect::<Result<_, _>>()?;
        Ok(Some(values))
    }
}
