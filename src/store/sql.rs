//! SQL whose conditions depend on the request, with numbered placeholders
//! (`$1`, `$2`, …) that both backends accept, and the `(time, id)` keyset
//! cursors the list APIs page with.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::Backend;
use super::db::{self, Bind, Conn, Param};

/// A statement under construction and its bound text values.
pub struct Sql {
    text: String,
    binds: Vec<String>,
}

impl Sql {
    /// Starts from `text`, whose `$1…$n` are `binds`.
    pub fn new(text: impl Into<String>, binds: Vec<String>) -> Sql {
        Sql {
            text: text.into(),
            binds,
        }
    }

    pub fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// Binds `value` as the next parameter and returns its number.
    pub fn param(&mut self, value: impl Into<String>) -> usize {
        self.binds.push(value.into());
        self.binds.len()
    }

    /// Appends `template` with every `?` naming `value`, bound once.
    pub fn bind(&mut self, template: &str, value: impl Into<String>) {
        let n = self.param(value);
        self.text.push_str(&template.replace('?', &format!("${n}")));
    }

    /// Keeps the rows that come after `cursor` in `(time_column, id)` order
    /// (before it when `descending`): stable while rows are added.
    pub fn after(&mut self, time_column: &str, descending: bool, cursor: &(String, String)) {
        let cmp = if descending { "<" } else { ">" };
        let at = self.param(cursor.0.clone());
        let id = self.param(cursor.1.clone());
        self.text.push_str(&format!(
            " AND ({time_column} {cmp} ${at} OR ({time_column} = ${at} AND id {cmp} ${id}))"
        ));
    }

    pub async fn fetch_all(&self, conn: &mut Conn) -> Result<Vec<db::Row>, db::Error> {
        let params = self.binds.iter().map(|b| Param::Text(b.clone())).collect();
        db::Query::with(self.text.as_str(), params)
            .fetch_all(conn)
            .await
    }

    /// [`db::Query::fetch_within`]: the rows up to `max_bytes`, and
    /// whether that cut them short.
    pub async fn fetch_within(
        &self,
        conn: &mut Conn,
        max_bytes: usize,
    ) -> Result<(Vec<db::Row>, bool), db::Error> {
        let params = self.binds.iter().map(|b| Param::Text(b.clone())).collect();
        db::Query::with(self.text.as_str(), params)
            .fetch_within(conn, max_bytes)
            .await
    }
}

/// Data-changing statements sent together, their parameters numbered
/// across all of them. SQLite, in process, runs the parts in turn, each
/// binding the parameters it names; PostgreSQL, which takes one statement
/// per parameterised query, gets the leading parts as data-modifying `WITH`
/// clauses, which it runs exactly once each whether or not anything reads
/// them. That is what lets a write append its journal entries, its audit
/// event and the new chain head in one round trip to the server.
#[derive(Default)]
pub struct Combined {
    parts: Vec<String>,
    params: Vec<Param>,
    /// Statements without parameters that follow, in the same round trip.
    then: Option<String>,
}

impl Combined {
    /// Binds `value` as the next parameter and returns its placeholder.
    pub fn param(&mut self, value: impl Bind) -> String {
        self.params.push(value.into_param());
        format!("${}", self.params.len())
    }

    /// Appends one statement; it must not return rows.
    pub fn push(&mut self, statement: String) {
        self.parts.push(statement);
    }

    /// Statements without parameters, separated by `;`, to run after the
    /// others if they all succeeded, in the same round trip (on PostgreSQL
    /// with the values inlined: [`Conn::execute_then`]).
    /// Statements given twice run in the order given.
    pub fn then(&mut self, statements: impl Into<String>) {
        let statements = statements.into();
        self.then = Some(match self.then.take() {
            Some(before) => format!("{before}; {statements}"),
            None => statements,
        });
    }

    /// Puts one statement before all others (SQLite runs them in order and
    /// stops at the first that fails). Placeholders keep their numbers.
    pub fn push_first(&mut self, statement: String) {
        self.parts.insert(0, statement);
    }

    /// The text sent for `backend`.
    fn text(&self, backend: Backend) -> String {
        match (backend, self.parts.split_last()) {
            (_, None) => String::new(),
            (Backend::Sqlite, _) => self.parts.join(";\n"),
            (Backend::Postgres, Some((last, leading))) => {
                let mut text = String::new();
                for (i, part) in leading.iter().enumerate() {
                    text.push_str(if i == 0 { "WITH " } else { ", " });
                    text.push_str(&format!("s{i} AS ({part})"));
                }
                if !leading.is_empty() {
                    text.push(' ');
                }
                text.push_str(last);
                text
            }
        }
    }

    pub async fn execute(self, conn: &mut Conn, backend: Backend) -> Result<(), db::Error> {
        self.execute_with(conn, backend, None).await
    }

    /// [`Combined::execute`]; on PostgreSQL with [`Combined::then`], the
    /// combined statement runs as the connection's prepared statement when
    /// the caller keeps track of them (`prepared`).
    pub async fn execute_with(
        self,
        conn: &mut Conn,
        backend: Backend,
        prepared: Option<&mut std::collections::HashSet<String>>,
    ) -> Result<(), db::Error> {
        match backend {
            Backend::Sqlite => {
                conn.execute_each(&self.parts, &self.params)?;
                if let Some(then) = &self.then {
                    conn.execute_batch(then).await?;
                }
                Ok(())
            }
            Backend::Postgres => {
                let text = self.text(backend);
                let Combined {
                    parts,
                    params,
                    then,
                } = self;
                match (parts.is_empty(), then.as_deref()) {
                    (true, None) => Ok(()),
                    (true, Some(then)) => conn.execute_batch(then).await,
                    (false, None) => {
                        db::Query::with(text, params).execute(conn).await?;
                        Ok(())
                    }
                    (false, Some(then)) => match prepared {
                        Some(prepared) => {
                            conn.execute_prepared_then(&text, params, then, prepared)
                                .await
                        }
                        None => conn.execute_then(&text, params, then).await,
                    },
                }
            }
        }
    }
}

/// The most one page of a list holds in memory (NET-5): rows of records
/// and audit events may each be as large as a request body, so a row count
/// alone does not bound a page.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Trims `items` — fetched with `limit + 1` to learn whether more follow —
/// to one page, and returns the cursor of its last item when more follow.
pub fn one_page<T>(
    items: &mut Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> String,
) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if items.len() <= limit {
        return None;
    }
    items.truncate(limit);
    items.last().map(cursor_of)
}

/// An opaque page cursor for a `(time, id)` position.
pub fn encode_cursor(at: &str, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{at}|{id}"))
}

/// `None` for anything [`encode_cursor`] did not produce.
pub fn decode_cursor(text: &str) -> Option<(String, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (at, id) = text.split_once('|')?;
    Some((at.to_owned(), id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_in_order_and_reused_where_named_twice() {
        let mut sql = Sql::new("SELECT * FROM t WHERE tenant_id = $1", vec!["t".into()]);
        sql.bind(" AND (a = ? OR b = ?)", "x");
        sql.after("created_at", true, &("2026".into(), "id9".into()));
        assert_eq!(
            sql.text,
            "SELECT * FROM t WHERE tenant_id = $1 AND (a = $2 OR b = $2) \
             AND (created_at < $3 OR (created_at = $3 AND id < $4))"
        );
        assert_eq!(sql.binds, ["t", "x", "2026", "id9"]);
    }

    #[test]
    fn combined_statements_share_one_numbering_and_become_ctes_on_postgres() {
        let mut combined = Combined::default();
        let a = combined.param("x");
        combined.push(format!("INSERT INTO a VALUES ({a})"));
        let b = combined.param(7_i64);
        combined.push(format!("UPDATE b SET n = {b} WHERE k = {a}"));
        assert_eq!(
            combined.text(Backend::Sqlite),
            "INSERT INTO a VALUES ($1);\nUPDATE b SET n = $2 WHERE k = $1"
        );
        assert_eq!(
            combined.text(Backend::Postgres),
            "WITH s0 AS (INSERT INTO a VALUES ($1)) UPDATE b SET n = $2 WHERE k = $1"
        );
    }

    #[test]
    fn one_page_trims_the_extra_row_and_names_the_last_kept() {
        let mut items = vec![1, 2, 3];
        assert_eq!(one_page(&mut items, 2, |i| i.to_string()), Some("2".into()));
        assert_eq!(items, [1, 2]);
        assert_eq!(one_page(&mut items, 2, |i| i.to_string()), None);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = encode_cursor("2026-01-01T00:00:00.000000Z", "abc");
        assert_eq!(
            decode_cursor(&cursor),
            Some(("2026-01-01T00:00:00.000000Z".into(), "abc".into()))
        );
        assert_eq!(decode_cursor("%%%"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("no-separator")), None);
    }
}
