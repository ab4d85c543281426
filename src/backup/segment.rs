//! The shipped form of a tenant's journal (BAK-1): segments, each a run of
//! consecutive journal entries sealed with the tenant's data key, and a
//! head naming the newest.
//!
//! A segment object is `strongroom-segment-v1\n`, a header line of JSON
//! (tenant, first and last seq, entry count, key version, the build that
//! wrote it, the SHA-256 of the previous segment object) and the entries
//! as JSON lines sealed with AES-256-GCM, the magic and header being the
//! associated data: a changed header or body does not open. The previous
//! segment's hash chains the segments, so a missing, swapped or replaced
//! segment breaks the chain where it happened, and the head (the newest
//! segment's seq and hash, rewritten at every flush) catches a cut tail.
//! The header holds numbers and hashes only: nothing of the tenant's data.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::aead::DataKey;

const MAGIC: &[u8] = b"strongroom-segment-v1\n";
/// The hash a tenant's first segment names as its predecessor.
pub const NO_SEGMENT: &str = "none";

/// What a segment says of itself, readable without the key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub tenant: String,
    pub first: i64,
    pub last: i64,
    pub entries: usize,
    pub key_version: i64,
    pub app_version: String,
    pub sealed_at: String,
    /// SHA-256 (hex) of the previous segment object, or [`NO_SEGMENT`].
    pub previous: String,
}

/// One journal entry, as shipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: i64,
    pub occurred_at: String,
    pub entity: String,
    pub entity_id: String,
    pub op: String,
    pub after: Option<String>,
    /// The stored rows the change left, by table (`store::image`); absent
    /// where nothing is restored, and in entries from before images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<String>,
    pub app_version: String,
}

/// The newest segment of a tenant, as the head object records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub tenant: String,
    pub last: i64,
    /// SHA-256 (hex) of the newest segment object.
    pub sha256: String,
    pub app_version: String,
    pub shipped_at: String,
}

/// Where a tenant's chain of segments begins once older ones are pruned:
/// the first seq kept and the hash its segment names as predecessor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    pub tenant: String,
    pub first: i64,
    pub previous: String,
    pub pruned_at: String,
}

pub fn base_key(tenant: &str) -> String {
    format!("t/{tenant}/base.json")
}

/// Where a tenant's segments and head live in the backup target. The zero
/// padding makes the keys sort by seq.
pub fn segment_key(tenant: &str, first: i64, last: i64) -> String {
    format!("t/{tenant}/journal/{first:020}-{last:020}.seg")
}

pub fn journal_prefix(tenant: &str) -> String {
    format!("t/{tenant}/journal/")
}

pub fn head_key(tenant: &str) -> String {
    format!("t/{tenant}/head.json")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::store::chain::to_hex(Sha256::digest(bytes).as_slice())
}

/// The object of a segment: `entries` (consecutive, from `header.first`)
/// sealed under `key`.
pub fn seal(header: &Header, entries: &[Entry], key: &DataKey) -> Vec<u8> {
    let mut body = Vec::new();
    for entry in entries {
        // Serialising plain strings and integers cannot fail.
        body.extend(serde_json::to_vec(entry).unwrap_or_default());
        body.push(b'\n');
    }
    let mut out = MAGIC.to_vec();
    out.extend(serde_json::to_vec(header).unwrap_or_default());
    out.push(b'\n');
    let sealed = key.seal(&out, &body);
    out.extend(sealed);
    out
}

/// What is wrong with a segment.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SegmentError {
    #[error("not a segment (no header)")]
    NoHeader,
    #[error("its header does not parse: {0}")]
    BadHeader(String),
    #[error("it does not open with the tenant's key version {0}: changed, or not ours")]
    DoesNotOpen(i64),
    #[error("its entries do not parse: {0}")]
    BadEntries(String),
    #[error("its entries are not seq {first}..={last} in order (entry {at} is seq {found})")]
    OutOfOrder {
        first: i64,
        last: i64,
        at: usize,
        found: i64,
    },
}

/// The header of a segment object, without opening it.
pub fn header(bytes: &[u8]) -> Result<(Header, usize), SegmentError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(SegmentError::NoHeader)?;
    let end = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(SegmentError::NoHeader)?;
    let header: Header =
        serde_json::from_slice(&rest[..end]).map_err(|e| SegmentError::BadHeader(e.to_string()))?;
    Ok((header, MAGIC.len() + end + 1))
}

/// Opens a segment object with `key` (the version its header names) and
/// checks its entries are exactly `first..=last`, in order.
pub fn open(bytes: &[u8], key: &DataKey) -> Result<(Header, Vec<Entry>), SegmentError> {
    let (header, body_at) = header(bytes)?;
    let (aad, sealed) = bytes.split_at(body_at);
    let body = key
        .open(aad, sealed)
        .map_err(|_| SegmentError::DoesNotOpen(header.key_version))?;
    let mut entries = Vec::with_capacity(header.entries);
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let entry: Entry =
            serde_json::from_slice(line).map_err(|e| SegmentError::BadEntries(e.to_string()))?;
        entries.push(entry);
    }
    let expected = header.last - header.first + 1;
    for (at, entry) in entries.iter().enumerate() {
        if entry.seq != header.first + at as i64 {
            return Err(SegmentError::OutOfOrder {
                first: header.first,
                last: header.last,
                at,
                found: entry.seq,
            });
        }
    }
    if entries.len() as i64 != expected || entries.len() != header.entries {
        return Err(SegmentError::BadEntries(format!(
            "{} entries for seq {}..={}",
            entries.len(),
            header.first,
            header.last
        )));
    }
    Ok((header, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64) -> Entry {
        Entry {
            seq,
            occurred_at: "2026-12-02T00:00:00Z".into(),
            entity: "record".into(),
            entity_id: format!("r{seq}"),
            op: "insert".into(),
            after: Some(format!("{{\"title\":\"secret-{seq}\"}}")),
            rows: None,
            app_version: "test".into(),
        }
    }

    fn header(first: i64, last: i64) -> Header {
        Header {
            tenant: "t1".into(),
            first,
            last,
            entries: (last - first + 1) as usize,
            key_version: 1,
            app_version: "test".into(),
            sealed_at: "2026-12-02T00:00:00Z".into(),
            previous: NO_SEGMENT.into(),
        }
    }

    #[test]
    fn a_segment_opens_to_its_entries_and_shows_none_of_them() {
        let key = DataKey::new(&crate::crypto::aead::generate_key());
        let entries: Vec<Entry> = (5..=7).map(entry).collect();
        let sealed = seal(&header(5, 7), &entries, &key);
        assert!(!sealed.windows(8).any(|w| w == b"secret-5"));
        let (opened_header, opened) = open(&sealed, &key).unwrap();
        assert_eq!(opened_header, header(5, 7));
        assert_eq!(opened, entries);
    }

    #[test]
    fn a_changed_byte_header_or_key_does_not_open() {
        let key = DataKey::new(&crate::crypto::aead::generate_key());
        let entries: Vec<Entry> = (1..=2).map(entry).collect();
        let sealed = seal(&header(1, 2), &entries, &key);
        let mut body = sealed.clone();
        let last = body.len() - 1;
        body[last] ^= 1;
        assert_eq!(open(&body, &key), Err(SegmentError::DoesNotOpen(1)));
        // A header claiming another range, same length: the body is bound
        // to the header it was sealed with.
        let mut moved = sealed.clone();
        let at = moved.windows(8).position(|w| w == b"\"last\":2").unwrap();
        moved[at + 7] = b'3';
        assert_eq!(open(&moved, &key), Err(SegmentError::DoesNotOpen(1)));
        let other = DataKey::new(&crate::crypto::aead::generate_key());
        assert_eq!(open(&sealed, &other), Err(SegmentError::DoesNotOpen(1)));
    }

    #[test]
    fn entries_out_of_their_range_are_refused() {
        let key = DataKey::new(&crate::crypto::aead::generate_key());
        let entries = vec![entry(1), entry(3)];
        let sealed = seal(&header(1, 2), &entries, &key);
        assert!(matches!(
            open(&sealed, &key),
            Err(SegmentError::OutOfOrder {
                at: 1,
                found: 3,
                ..
            })
        ));
    }
}
