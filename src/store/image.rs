//! BAK-2, BAK-4: the stored form of a tenant's rows, as the journal keeps
//! it for each change and as snapshots hold it, and the statements that put
//! it back.
//!
//! An entity's image is a JSON object naming, for each table the entity
//! lives in, every row it has there (`{"records": [...], "record_keys":
//! [...]}`), columns as stored: SQLite blobs as hex, PostgreSQL values as
//! `json_agg` writes them. The write path fills it into the journal once
//! the job's statements have run (a trailing statement, so PostgreSQL's
//! combined statement has taken effect), which makes the journal replayable
//! on top of a snapshot: a restore needs nothing but the images.
//!
//! What is not restored has no image: sessions, refresh tokens and one-time
//! challenges (a restore ends every session of the tenant); wrapped key
//! material never enters an image (the backup target keeps each key version
//! once, as an object of its own, so destroying a key shreds it there too).

use std::collections::HashMap;

use super::db::{self, Conn};
use super::{Backend, StoreError};

/// The tables an entity kind's image covers, each with the column its rows
/// are found by (the entity id).
const SOURCES: &[(&str, &[(&str, &str)])] = &[
    ("record", &[("records", "id"), ("record_keys", "record_id")]),
    ("collection", &[("collections", "id")]),
    ("user", &[("users", "id")]),
    ("role", &[("roles", "id")]),
    ("api_key", &[("api_keys", "id")]),
    ("support_grant", &[("support_grants", "id")]),
    ("invitation", &[("invitations", "id")]),
    ("mfa_factor", &[("mfa_factors", "id")]),
    ("recovery_codes", &[("recovery_codes", "user_id")]),
    ("device", &[("devices", "id")]),
    ("file", &[("files", "id")]),
    ("tenant_settings", &[("tenant_settings", "tenant_id")]),
    (
        "tenant_keys",
        &[("tenant_keys", "tenant_id"), ("key_rotations", "tenant_id")],
    ),
    ("tenant", &[("tenants", "id")]),
    (AUDIT_EVENT, &[("audit_events", "seq")]),
    // Followed by a standby (BAK-5), never restored: a restore ends them.
    ("session", &[("sessions", "id")]),
    ("refresh_token", &[("refresh_tokens", "token_hash")]),
];

/// Imaged for a standby only (not in a tenant's restorable state).
pub const FOLLOWED: &[&str] = &["sessions", "refresh_tokens"];

/// Tables other rows point at (by `id`): a standby updates their rows in
/// place rather than deleting them, which would take the children along.
pub const PARENTS: &[&str] = &["tenants", "users", "collections", "records", "sessions"];

/// The journal's entity kind for an audit event: every event is journaled,
/// so a restore from the target alone has the whole trail.
pub const AUDIT_EVENT: &str = "audit_event";

/// Every table a tenant's restorable state lives in, parents first: the
/// order rows are inserted in (and deleted in reverse).
pub const RESTORED: &[&str] = &[
    "tenants",
    "tenant_settings",
    "roles",
    "users",
    "api_keys",
    "support_grants",
    "collections",
    "records",
    "record_keys",
    "files",
    "invitations",
    "devices",
    "mfa_factors",
    "recovery_codes",
    "tenant_keys",
    "key_rotations",
    "audit_events",
    "audit_checkpoints",
];

/// What a restore empties and does not bring back: every session ends, and
/// nothing half-done (a reset link, a login step) survives it. Children
/// first.
pub const CLEARED: &[&str] = &[
    "refresh_tokens",
    "sessions",
    "password_resets",
    "mfa_challenges",
    "passkey_challenges",
];

/// Columns no image carries: key material (shipped apart, see the module
/// doc).
const OMITTED: &[(&str, &str)] = &[("tenant_keys", "wrapped")];

/// The column naming the tenant in `table`.
pub fn tenant_column(table: &str) -> &'static str {
    if table == "tenants" {
        "id"
    } else {
        "tenant_id"
    }
}

/// The column an entity's rows are found by in `table`, if any entity's
/// image covers it.
pub fn key_column(table: &str) -> Option<&'static str> {
    SOURCES
        .iter()
        .flat_map(|(_, parts)| parts.iter())
        .find(|(t, _)| *t == table)
        .map(|(_, key)| *key)
}

/// Whether `entity`'s image covers a table a restore brings back.
pub fn restorable(entity: &str) -> bool {
    SOURCES
        .iter()
        .any(|(e, parts)| *e == entity && parts.iter().any(|(t, _)| RESTORED.contains(t)))
}

/// Whether the journal keeps an image for `entity`.
pub fn has_image(entity: &str) -> bool {
    SOURCES.iter().any(|(e, _)| *e == entity)
}

#[derive(Clone, Debug)]
struct Column {
    name: String,
    /// SQLite: a blob, carried as hex. PostgreSQL: its type name.
    blob: bool,
    pg_type: String,
}

/// The columns of the restorable tables, read from the database once the
/// migrations have run.
#[derive(Clone, Debug)]
pub struct Images {
    backend: Backend,
    tables: HashMap<String, Vec<Column>>,
}

impl Images {
    pub(super) async fn load(conn: &mut Conn, backend: Backend) -> Result<Images, StoreError> {
        let mut tables = HashMap::new();
        for table in RESTORED.iter().chain(FOLLOWED) {
            let columns = match backend {
                Backend::Sqlite => {
                    let rows = db::query(format!(
                        "SELECT name, type FROM pragma_table_info('{table}')"
                    ))
                    .fetch_all(conn)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            let name: String = row.try_get(0)?;
                            let ty: String = row.try_get(1)?;
                            Ok(Column {
                                name,
                                blob: ty.eq_ignore_ascii_case("blob"),
                                pg_type: String::new(),
                            })
                        })
                        .collect::<Result<Vec<_>, db::Error>>()?
                }
                Backend::Postgres => {
                    let rows = db::query(
                        "SELECT column_name::text, udt_name::text FROM information_schema.columns \
                         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                    )
                    .bind(*table)
                    .fetch_all(conn)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(Column {
                                name: row.try_get(0)?,
                                blob: false,
                                pg_type: row.try_get(1)?,
                            })
                        })
                        .collect::<Result<Vec<_>, db::Error>>()?
                }
            };
            if columns.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "table {table} has no columns the backup can read"
                )));
            }
            let columns = columns
                .into_iter()
                .filter(|c| !OMITTED.contains(&(*table, c.name.as_str())))
                .collect();
            tables.insert((*table).to_owned(), columns);
        }
        Ok(Images { backend, tables })
    }

    fn columns(&self, table: &str) -> &[Column] {
        self.tables.get(table).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A scalar subquery: every row of `table` matching `filter`, as a JSON
    /// array (text on SQLite, `json` on PostgreSQL).
    pub fn rows_of(&self, table: &str, filter: &str) -> String {
        let columns = self.columns(table);
        match self.backend {
            Backend::Sqlite => {
                let pairs: Vec<String> = columns
                    .iter()
                    .map(|c| {
                        let value = if c.blob {
                            format!(
                                "CASE WHEN \"{0}\" IS NULL THEN NULL ELSE hex(\"{0}\") END",
                                c.name
                            )
                        } else {
                            format!("\"{}\"", c.name)
                        };
                        format!("'{}', {value}", c.name)
                    })
                    .collect();
                format!(
                    "(SELECT json_group_array(json_object({})) FROM \"{table}\" WHERE {filter})",
                    pairs.join(", ")
                )
            }
            Backend::Postgres => {
                let names: Vec<String> =
                    columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
                format!(
                    "(SELECT COALESCE(json_agg(x), '[]'::json) FROM (SELECT {} FROM \"{table}\" WHERE {filter}) x)",
                    names.join(", ")
                )
            }
        }
    }

    /// The image of one `entity` as an SQL expression, its rows found by
    /// the SQL expressions `tenant` and `key`; `None` when the journal keeps
    /// no image of it.
    pub fn image_of(&self, entity: &str, tenant: &str, key: &str) -> Option<String> {
        let (_, parts) = SOURCES.iter().find(|(e, _)| *e == entity)?;
        let mut objects = Vec::new();
        for (table, column) in *parts {
            let key = match self.backend {
                Backend::Postgres => {
                    let ty = self
                        .columns(table)
                        .iter()
                        .find(|c| c.name == *column)
                        .map(|c| c.pg_type.as_str())
                        .unwrap_or("text");
                    format!("CAST({key} AS {ty})")
                }
                Backend::Sqlite => key.to_owned(),
            };
            let filter = format!(
                "\"{table}\".\"{}\" = {tenant} AND \"{table}\".\"{column}\" = {key}",
                tenant_column(table)
            );
            let rows = self.rows_of(table, &filter);
            objects.push(match self.backend {
                // Text joined, not json(): the arrays are JSON already, and
                // parsing them again cost more than building them.
                Backend::Sqlite => format!("'\"{table}\":' || {rows}"),
                Backend::Postgres => format!("'{table}', {rows}"),
            });
        }
        Some(match self.backend {
            Backend::Sqlite => format!("('{{' || {} || '}}')", objects.join(" || ',' || ")),
            Backend::Postgres => format!("json_build_object({})::text", objects.join(", ")),
        })
    }

    /// PostgreSQL: the statement that fills the images of `entity`'s
    /// journal entries `seqs` of `tenant` from the rows as they are now,
    /// run after the job's combined statement (whose parts cannot see each
    /// other's effects), so without parameters: `tenant` is a tenant id,
    /// checked by its type where it came from.
    pub fn fill_journal(&self, tenant: &str, entity: &str, seqs: &[i64]) -> Option<String> {
        let image = self.image_of(entity, "journal.tenant_id", "journal.entity_id")?;
        let seqs: Vec<String> = seqs.iter().map(i64::to_string).collect();
        Some(format!(
            "UPDATE journal SET rows = {image} WHERE tenant_id = '{}' AND seq IN ({})",
            tenant.replace('\'', ""),
            seqs.join(", ")
        ))
    }

    /// The `rows` column of a journal entry as read: its image, or for an
    /// audit event, whose image is left to the reader (an event never
    /// changes once written), the event as it is now.
    pub fn rows_at_read(&self) -> String {
        let event = self
            .image_of(AUDIT_EVENT, "journal.tenant_id", "journal.entity_id")
            .unwrap_or_else(|| "NULL".to_owned());
        format!(
            "CASE WHEN journal.rows IS NULL AND journal.entity = '{AUDIT_EVENT}' THEN {event} ELSE journal.rows END"
        )
    }

    /// Every row of the tenant (`$1`) in `table`, as one JSON array.
    pub fn snapshot_query(&self, table: &str) -> String {
        let filter = format!("\"{}\" = $1", tenant_column(table));
        match self.backend {
            Backend::Sqlite => format!("SELECT {}", self.rows_of(table, &filter)),
            Backend::Postgres => format!("SELECT {}::text", self.rows_of(table, &filter)),
        }
    }

    /// Inserts the rows of the JSON array `$1` into `table`.
    pub fn insert_rows(&self, table: &str) -> String {
        match self.backend {
            Backend::Sqlite => {
                let columns = self.columns(table);
                let names: Vec<String> =
                    columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
                let values: Vec<String> = columns
                    .iter()
                    .map(|c| {
                        let value = format!("json_extract(value, '$.\"{}\"')", c.name);
                        if c.blob {
                            format!("unhex({value})")
                        } else {
                            value
                        }
                    })
                    .collect();
                format!(
                    "INSERT INTO \"{table}\" ({}) SELECT {} FROM json_each($1)",
                    names.join(", "),
                    values.join(", ")
                )
            }
            Backend::Postgres => {
                let names: Vec<String> = self
                    .columns(table)
                    .iter()
                    .map(|c| format!("\"{}\"", c.name))
                    .collect();
                format!(
                    "INSERT INTO \"{table}\" ({0}) SELECT {0} FROM json_populate_recordset(NULL::\"{table}\", $1::json)",
                    names.join(", ")
                )
            }
        }
    }

    /// Inserts the rows of the JSON array `$1` into `table`, updating in
    /// place a row whose `id` is there already (a standby's apply).
    pub fn upsert_rows(&self, table: &str) -> String {
        let updates: Vec<String> = self
            .columns(table)
            .iter()
            .filter(|c| c.name != "id")
            .map(|c| format!("\"{0}\" = excluded.\"{0}\"", c.name))
            .collect();
        let insert = self.insert_rows(table);
        // SQLite needs a WHERE before ON CONFLICT after a SELECT.
        let glue = match self.backend {
            Backend::Sqlite => " WHERE true",
            Backend::Postgres => "",
        };
        format!(
            "{insert}{glue} ON CONFLICT (\"id\") DO UPDATE SET {}",
            updates.join(", ")
        )
    }

    /// Deletes the rows of the tenant (`$1`) in `table` whose key column
    /// (`key`) is `$2`.
    pub fn delete_by_key(&self, table: &str, key: &str) -> String {
        let cast = match self.backend {
            Backend::Postgres => {
                let ty = self
                    .columns(table)
                    .iter()
                    .find(|c| c.name == key)
                    .map(|c| c.pg_type.as_str())
                    .unwrap_or("text");
                format!("CAST($2 AS {ty})")
            }
            Backend::Sqlite => "$2".to_owned(),
        };
        format!(
            "DELETE FROM \"{table}\" WHERE \"{}\" = $1 AND \"{key}\" = {cast}",
            tenant_column(table)
        )
    }

    /// Deletes every row of the tenant (`$1`) from `table`.
    pub fn delete_rows(table: &str) -> String {
        format!(
            "DELETE FROM \"{table}\" WHERE \"{}\" = $1",
            tenant_column(table)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_imaged_table_is_restored_or_followed_and_found_by_one_column() {
        for (_, parts) in SOURCES {
            for (table, key) in *parts {
                assert!(
                    RESTORED.contains(table) || FOLLOWED.contains(table),
                    "{table} is imaged but neither restored nor followed"
                );
                assert_eq!(
                    key_column(table),
                    Some(*key),
                    "{table} found by two columns"
                );
            }
        }
    }
}
