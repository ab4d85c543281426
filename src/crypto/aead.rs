//! AES-256-GCM with the nonce stored in front of the ciphertext (ENC-2).
//! Every seal takes associated data, so a ciphertext only opens in the
//! place it was written for.

use aes_gcm::aead::array::Array;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use super::CryptoError;

pub const KEY_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 12;
pub const TAG_BYTES: usize = 16;

/// Raw key material; zeroized when dropped, never printed.
pub type KeyBytes = Zeroizing<[u8; KEY_BYTES]>;

/// A fresh random key.
pub fn generate_key() -> KeyBytes {
    Zeroizing::new(super::random_bytes::<KEY_BYTES>())
}

/// A ready AES-256-GCM key. The cipher's key schedule is zeroized on drop
/// (aes-gcm's `zeroize` feature).
pub struct DataKey(Aes256Gcm);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

impl DataKey {
    pub fn new(bytes: &[u8; KEY_BYTES]) -> DataKey {
        DataKey(Aes256Gcm::new(&Array::from(*bytes)))
    }

    /// `nonce || ciphertext || tag`, with a random 96-bit nonce.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce = super::random_bytes::<NONCE_BYTES>();
        let mut out = Vec::with_capacity(NONCE_BYTES + plaintext.len() + TAG_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(&nonce, aad, &mut out[NONCE_BYTES..]);
        out.extend_from_slice(&tag);
        out
    }

    /// Opens what [`DataKey::seal`] produced.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_BYTES + TAG_BYTES {
            return Err(CryptoError::Integrity("ciphertext too short".into()));
        }
        let (nonce, rest) = sealed.split_at(NONCE_BYTES);
        let (body, tag) = rest.split_at(rest.len() - TAG_BYTES);
        let mut plain = Zeroizing::new(body.to_vec());
        self.open_in_place(nonce.try_into().expect("12 bytes"), aad, &mut plain, tag)?;
        Ok(plain)
    }

    /// Encrypts `buf` in place under an explicit nonce; returns the tag.
    /// The caller guarantees the nonce is never reused with this key.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_BYTES] {
        let tag = self
            .0
            .encrypt_inout_detached(&Array::from(*nonce), aad, buf.into())
            .expect("AES-GCM seals any message under 64 GiB");
        tag.into()
    }

    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        let tag: [u8; TAG_BYTES] = tag
            .try_into()
            .map_err(|_| CryptoError::Integrity("bad tag length".into()))?;
        self.0
            .decrypt_inout_detached(&Array::from(*nonce), aad, buf.into(), &Array::from(tag))
            .map_err(|_| CryptoError::Integrity("authentication failed".into()))
    }

    /// Wraps another key (key bytes sealed under this one).
    pub fn wrap(&self, aad: &[u8], key: &[u8; KEY_BYTES]) -> Vec<u8> {
        self.seal(aad, key)
    }

    pub fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<KeyBytes, CryptoError> {
        let plain = self.open(aad, wrapped)?;
        let bytes: [u8; KEY_BYTES] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Integrity("wrapped key has the wrong length".into()))?;
        Ok(Zeroizing::new(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_associated_data() {
        let key = DataKey::new(&generate_key());
        let sealed = key.seal(b"tenant/collection/record/field", b"4111 1111 1111 1111");
        assert!(!sealed.windows(4).any(|w| w == b"4111"));
        assert_eq!(
            key.open(b"tenant/collection/record/field", &sealed)
                .unwrap()
                .as_slice(),
            b"4111 1111 1111 1111"
        );
        assert!(key.open(b"tenant/collection/other/field", &sealed).is_err());
        let other = DataKey::new(&generate_key());
        assert!(
            other
                .open(b"tenant/collection/record/field", &sealed)
                .is_err()
        );
        let mut flipped = sealed.clone();
        flipped[NONCE_BYTES + 2] ^= 1;
        assert!(
            key.open(b"tenant/collection/record/field", &flipped)
                .is_err()
        );
        assert!(key.open(b"x", &sealed[..10]).is_err());
    }
}
