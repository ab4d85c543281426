//! Signed download links (FIL-2): a URL that works without a token until it
//! expires (at most [`MAX_TTL_SECONDS`]), bound by HMAC-SHA256 to one
//! tenant, one file and the user who asked for it. Expired or altered
//! links get `403`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::FileError;

pub const MAX_TTL_SECONDS: i64 = 300;
pub const DEFAULT_TTL_SECONDS: i64 = 60;

/// What a link grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant: String,
    pub file: String,
    /// The user who asked for the link (the audit trail's actor).
    pub by: String,
    /// Unix seconds.
    pub expires: i64,
}

fn mac(key: &[u8; 32], grant: &Grant) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in [&grant.tenant, &grant.file, &grant.by] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac.update(&grant.expires.to_be_bytes());
    mac
}

/// The path and query of the link.
pub fn link(key: &[u8; 32], grant: &Grant) -> String {
    let signature = crate::audit::chain::to_hex(&mac(key, grant).finalize().into_bytes());
    format!(
        "/api/v1/files/{}?tenant={}&by={}&expires={}&signature={signature}",
        grant.file, grant.tenant, grant.by, grant.expires
    )
}

/// Checks a presented link at time `now` (unix seconds).
pub fn check(key: &[u8; 32], grant: &Grant, signature: &str, now: i64) -> Result<(), FileError> {
    let bytes = crate::audit::chain::from_hex(signature).ok_or(FileError::BadSignature)?;
    mac(key, grant)
        .verify_slice(&bytes)
        .map_err(|_| FileError::BadSignature)?;
    if now > grant.expires {
        return Err(FileError::BadSignature);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_until_they_expire_and_not_when_altered() {
        let key = [9u8; 32];
        let grant = Grant {
            tenant: "t1".into(),
            file: "f1".into(),
            by: "u1".into(),
            expires: 1_000,
        };
        let url = link(&key, &grant);
        let signature = url.rsplit_once("signature=").unwrap().1;
        assert!(check(&key, &grant, signature, 999).is_ok());
        assert!(check(&key, &grant, signature, 1_001).is_err());
        let other = Grant {
            file: "f2".into(),
            ..grant.clone()
        };
        assert!(check(&key, &other, signature, 999).is_err());
        let later = Grant {
            expires: 5_000,
            ..grant.clone()
        };
        assert!(check(&key, &later, signature, 999).is_err());
        assert!(check(&[8u8; 32], &grant, signature, 999).is_err());
        assert!(check(&key, &grant, "zz", 999).is_err());
    }
}
