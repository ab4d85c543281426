//! Exports for forensic analysis (AUD-4): JSON Lines or CSV, streamed a page
//! at a time — each page its own short read transaction — so memory stays
//! flat however long the trail is. Every export is itself an audit event.
//!
//! CSV cells that a spreadsheet would run as a formula (leading `=`, `+`,
//! `-`, `@`, tab or carriage return) are prefixed with `'` (OWASP "CSV
//! injection"); everything else is exactly as stored.

use axum::body::Bytes;
use futures_util::Stream;

use super::query::{AuditError, AuditEvent, AuditFilter, Page};
use super::{Outcome, RequestMeta};
use crate::context::Permit;
use crate::store::Store;

/// Rows fetched per page while streaming.
const PAGE: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    pub fn parse(value: Option<&str>) -> Result<Format, AuditError> {
        match value {
            None | Some("jsonl") => Ok(Format::Jsonl),
            Some("csv") => Ok(Format::Csv),
            Some(_) => Err(AuditError::InvalidQuery(
                "format must be jsonl or csv".into(),
            )),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/jsonl",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// Records that an export happened (who, which log, which format).
pub async fn record_export(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    action: &'static str,
    format: Format,
) -> Result<(), AuditError> {
    store
        .write(permit, meta, action, move |tx| {
            Box::pin(async move {
                tx.set_outcome(Outcome::Success);
                tx.set_target("export", format.extension());
                Ok::<_, AuditError>(())
            })
        })
        .await
}

pub const AUDIT_CSV_COLUMNS: &[&str] = &[
    "occurred_at",
    "seq",
    "action",
    "outcome",
    "actor_type",
    "actor_id",
    "actor_email",
    "ip",
    "user_agent",
    "target_type",
    "target_id",
    "app_version",
    "request_id",
    "changes",
    "hash",
    "id",
];

fn audit_csv_row(event: &AuditEvent, out: &mut String) {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let cells: [Option<String>; 16] = [
        Some(event.occurred_at.clone()),
        Some(event.seq.to_string()),
        Some(event.action.clone()),
        Some(event.outcome.clone()),
        text(&event.actor["type"]),
        text(&event.actor["id"]),
        text(&event.actor["email"]),
        event.ip.clone(),
        event.user_agent.clone(),
        event.target.as_ref().and_then(|t| text(&t["type"])),
        event.target.as_ref().and_then(|t| text(&t["id"])),
        Some(event.app_version.clone()),
        Some(event.request_id.clone()),
        event.changes.as_ref().map(|c| c.to_string()),
        event.hash.clone(),
        Some(event.id.clone()),
    ];
    write_csv_line(cells.iter().map(|c| c.as_deref()), out);
}

/// Appends one CSV record (RFC 4180 quoting) and a CRLF.
pub fn write_csv_line<'a>(cells: impl Iterator<Item = Option<&'a str>>, out: &mut String) {
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let Some(cell) = cell else { continue };
        let guarded = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
        let quote = guarded || cell.contains([',', '"', '\n', '\r']);
        if quote {
            out.push('"');
        }
        if guarded {
            out.push('\'');
        }
        for c in cell.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        if quote {
            out.push('"');
        }
    }
    out.push_str("\r\n");
}

/// Something an export writes, one line or record per item.
pub trait Exportable: serde::Serialize {
    /// The cursor that continues after this item.
    type Cursor: Clone + Send + 'static;
    const CSV_COLUMNS: &'static [&'static str];
    fn cursor(&self) -> Self::Cursor;
    fn csv_row(&self, out: &mut String);
}

impl Exportable for AuditEvent {
    type Cursor = i64;
    const CSV_COLUMNS: &'static [&'static str] = AUDIT_CSV_COLUMNS;
    fn cursor(&self) -> i64 {
        self.seq
    }
    fn csv_row(&self, out: &mut String) {
        audit_csv_row(self, out)
    }
}

/// Streams everything `fetch` returns, page after page from `start`, as
/// chunks of JSON Lines or CSV; stops at the first short page.
pub fn paged_stream<T, F, Fut>(
    format: Format,
    start: T::Cursor,
    fetch: F,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    T: Exportable + Send + 'static,
    F: Fn(T::Cursor, i64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<T>, AuditError>> + Send,
{
    let fetch = std::sync::Arc::new(fetch);
    // (cursor, header written, finished)
    futures_util::stream::unfold((start, false, false), move |(cursor, started, done)| {
        let fetch = fetch.clone();
        async move {
            if done {
                return None;
            }
            let items = match fetch(cursor.clone(), PAGE).await {
                Ok(items) => items,
                Err(e) => {
                    tracing::error!(error = %e, "export failed mid-stream");
                    return Some((
                        Err(std::io::Error::other("export failed")),
                        (cursor, true, true),
                    ));
                }
            };
            let mut chunk = String::new();
            if !started && format == Format::Csv {
                write_csv_line(T::CSV_COLUMNS.iter().map(|c| Some(*c)), &mut chunk);
            }
            for item in &items {
                match format {
                    Format::Jsonl => {
                        chunk.push_str(&serde_json::to_string(item).unwrap_or_default());
                        chunk.push('\n');
                    }
                    Format::Csv => item.csv_row(&mut chunk),
                }
            }
            // A page may be cut short by bytes: only an empty one ends.
            let finished = items.is_empty();
            let next = items.last().map(T::cursor).unwrap_or(cursor);
            if chunk.is_empty() {
                return None;
            }
            Some((Ok(Bytes::from(chunk)), (next, true, finished)))
        }
    })
}

/// The tenant's audit events matching `filter`, oldest first.
pub fn audit_stream(
    store: Store,
    permit: Permit,
    filter: AuditFilter,
    format: Format,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    paged_stream::<AuditEvent, _, _>(format, 0, move |after, limit| {
        let (store, permit, filter) = (store.clone(), permit.clone(), filter.clone());
        async move {
            let mut tx = store.read(permit.scope()).await?;
            let (mut events, _) = super::list(
                &mut tx,
                permit.scope().id_str(),
                &filter,
                Page::OldestFirst { after },
                limit,
            )
            .await?;
            // The export shows what the reader may read, as the list does.
            for event in &mut events {
                event.limit_to(permit.reach());
            }
            Ok(events)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_neutralised() {
        let mut out = String::new();
        write_csv_line(
            [
                Some("plain"),
                None,
                Some("a,b"),
                Some("say \"hi\""),
                Some("=cmd()"),
                Some("x\ny"),
            ]
            .into_iter(),
            &mut out,
        );
        assert_eq!(
            out,
            "plain,,\"a,b\",\"say \"\"hi\"\"\",\"'=cmd()\",\"x\ny\"\r\n"
        );
    }
}
