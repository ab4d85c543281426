//! Keys and encryption (ENC-2, ENC-3). The keyring holds the master key and
//! what is derived from it. The master key comes from
//! `STRONGROOM_MASTER_KEY` (base64 of 32 bytes) or from
//! `<data_dir>/master.key`, created with mode 0600 on first start; a key
//! file readable by group or others is refused.
//!
//! The master key is a key-encryption key (the [`KeyEncryptionKey`] trait,
//! so a KMS can take its place): it wraps each tenant's data keys, which
//! live in the [`vault`], versioned and stored only wrapped. A tenant may
//! bring its own key (BYOK) to wrap its data keys instead. Values and files
//! are sealed with [`aead`] and [`stream`].
//!
//! The access-token signing key (Ed25519) is derived from the master key
//! with HKDF-SHA256 under a fixed label, so every app server sharing the
//! master key signs and verifies the same tokens without further state.
//! Audit checkpoints are signed with a second key derived the same way.
//! Key material lives in `secrecy`/`zeroize` types and is never logged.

pub mod aead;
pub mod stream;
pub mod vault;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures_util::future::BoxFuture;
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use aead::{DataKey, KeyBytes};
pub use vault::Vault;

use crate::store::StoreError;
use crate::store::db;

pub const KEY_FILE: &str = "master.key";
/// The key a master-key rotation moves to, until the rotation finishes.
const NEXT_KEY_FILE: &str = "master.key.next";
/// Present while the master key is one `serve` generated on first start.
const GENERATED_MARKER: &str = "master.key.generated";
const JWT_LABEL: &[u8] = b"strongroom/v1/access-token-signing";
const CHECKPOINT_LABEL: &[u8] = b"strongroom/v1/audit-checkpoint-signing";
const POSTURE_LABEL: &[u8] = b"strongroom/v1/posture-report-signing";
const KEK_LABEL: &[u8] = b"strongroom/v1/key-encryption";
const URL_LABEL: &[u8] = b"strongroom/v1/signed-urls";
const COOKIE_LABEL: &[u8] = b"strongroom/v1/session-cookies";
const INSTANCE_BACKUP_LABEL: &[u8] = b"strongroom/v1/instance-backup";
const OPERATOR_SECRETS_LABEL: &[u8] = b"strongroom/v1/operator-secrets";

/// Why encrypted data could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the tenant's data keys are wrapped by its own key {fingerprint}, which has been revoked; \
         supply that key again with PUT /api/v1/tenant/keys/byok"
    )]
    KeyRevoked { fingerprint: String },
    #[error("the tenant's keys have been destroyed; its encrypted data can no longer be read")]
    KeysDestroyed,
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error("the tenant's data keys are wrapped by key {expected}; supply that key")]
    WrongKey { expected: String },
    #[error("a customer-managed key must be base64 of exactly 32 bytes")]
    MalformedKey,
    #[error("the data keys are wrapped by {0}, which this server does not hold")]
    UnknownWrappingKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<db::Error> for CryptoError {
    fn from(e: db::Error) -> Self {
        CryptoError::Store(e.into())
    }
}

/// Wraps and unwraps data keys. The master key is one; a KMS would be
/// another (its calls are remote, hence the futures).
pub trait KeyEncryptionKey: Send + Sync {
    /// Stored beside everything it wraps, e.g. `master:3f2a…`.
    fn id(&self) -> &str;
    fn wrap<'a>(
        &'a self,
        aad: &'a [u8],
        key: &'a [u8; aead::KEY_BYTES],
    ) -> BoxFuture<'a, Result<Vec<u8>, CryptoError>>;
    fn unwrap<'a>(
        &'a self,
        aad: &'a [u8],
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<KeyBytes, CryptoError>>;
}

/// A key-encryption key held in this process (the master key, or a
/// tenant's own key while it is supplied).
pub struct LocalKek {
    id: String,
    key: DataKey,
}

impl LocalKek {
    pub fn new(id: String, key: &[u8; aead::KEY_BYTES]) -> LocalKek {
        LocalKek {
            id,
            key: DataKey::new(key),
        }
    }
}

impl KeyEncryptionKey for LocalKek {
    fn id(&self) -> &str {
        &self.id
    }

    fn wrap<'a>(
        &'a self,
        aad: &'a [u8],
        key: &'a [u8; aead::KEY_BYTES],
    ) -> BoxFuture<'a, Result<Vec<u8>, CryptoError>> {
        Box::pin(async move { Ok(self.key.wrap(aad, key)) })
    }

    fn unwrap<'a>(
        &'a self,
        aad: &'a [u8],
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<KeyBytes, CryptoError>> {
        Box::pin(async move { self.key.unwrap(aad, wrapped) })
    }
}

/// A short public name for a key: 16 bytes of a labelled SHA-256, in hex.
/// Shown to users instead of the key; reveals nothing about it.
pub fn fingerprint(key: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"strongroom/v1/key-fingerprint")
        .chain_update(key)
        .finalize();
    crate::audit::chain::to_hex(&digest[..16])
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the master key must be base64 of exactly 32 bytes")]
    Malformed,
    #[error(
        "the master key file {0} is readable by group or others; run `chmod 600 {0}` and start again"
    )]
    LoosePermissions(PathBuf),
    #[error(
        "a master-key rotation was interrupted ({0} exists); run `strongroom keys rotate-master` again to finish it before starting the server"
    )]
    RotationUnfinished(PathBuf),
    #[error(
        "the master key is set by STRONGROOM_MASTER_KEY; rotate it by rewrapping under a key file, or in your secret store, not here"
    )]
    ConfiguredKey,
    #[error("could not read or create the master key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Keyring {
    signing: SigningKey,
    verifying: VerifyingKey,
    checkpoint: SigningKey,
    posture: SigningKey,
    kek: Arc<dyn KeyEncryptionKey>,
    url_key: SecretBox<[u8; 32]>,
    cookie_key: SecretBox<[u8; 32]>,
    instance_backup_key: SecretBox<[u8; 32]>,
    operator_key: SecretBox<[u8; 32]>,
}

impl Keyring {
    /// Loads the master key from `configured` or the key file in
    /// `data_dir` (creating it on first start) and derives the working keys.
    pub fn load(data_dir: &Path, configured: Option<&SecretString>) -> Result<Keyring, KeyError> {
        let master = match configured {
            Some(b64) => decode_master(b64.expose_secret())?,
            None => {
                let next = data_dir.join(NEXT_KEY_FILE);
                if next.exists() {
                    return Err(KeyError::RotationUnfinished(next));
                }
                let path = data_dir.join(KEY_FILE);
                let generating = !path.exists();
                let master = load_or_create_key_file(&path)?;
                if generating {
                    // Remembered, so that production can refuse a key
                    // nobody gave it (TEN-3).
                    let _ = std::fs::write(data_dir.join(GENERATED_MARKER), b"");
                }
                master
            }
        };
        Ok(Keyring::from_master(&master))
    }

    /// What is wrong with the master key for production (TEN-3): none
    /// given and none in the data dir yet (the server would make one up),
    /// one the server generated itself, one of all zeros, or a key file
    /// others may read.
    pub fn production_problems(data_dir: &Path, configured: Option<&SecretString>) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut problems = Vec::new();
        let all_zero = |key: &SecretBox<[u8; 32]>| key.expose_secret().iter().all(|b| *b == 0);
        match configured {
            Some(b64) => match decode_master(b64.expose_secret()) {
                Ok(key) if all_zero(&key) => {
                    problems.push("the master key is all zeros".to_owned());
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("the master key: {e}")),
            },
            None => {
                let path = data_dir.join(KEY_FILE);
                match std::fs::metadata(&path) {
                    Err(_) => problems.push(format!(
                        "no master key was given (master_key, or a key file at {}): \
                         production does not make one up",
                        path.display()
                    )),
                    Ok(meta) => {
                        if meta.permissions().mode() & 0o077 != 0 {
                            problems.push(format!(
                                "the key file {} is readable by group or others",
                                path.display()
                            ));
                        }
                        if data_dir.join(GENERATED_MARKER).exists() {
                            problems.push(format!(
                                "the master key in {} was generated by the server itself: \
                                 give production its key",
                                path.display()
                            ));
                        }
                        let text = std::fs::read_to_string(&path).map(Zeroizing::new);
                        if let Ok(Ok(key)) = text.map(|t| decode_master(&t))
                            && all_zero(&key)
                        {
                            problems.push("the master key is all zeros".to_owned());
                        }
                    }
                }
            }
        }
        problems
    }

    /// Master-key rotation, step one: the current keyring and the next one,
    /// whose key is written to `master.key.next` (or read back from it when
    /// an earlier rotation was interrupted). Step two rewraps; step three is
    /// [`Keyring::finish_rotation`].
    pub fn begin_rotation(
        data_dir: &Path,
        configured: Option<&SecretString>,
    ) -> Result<(Keyring, Keyring), KeyError> {
        if configured.is_some() {
            return Err(KeyError::ConfiguredKey);
        }
        let current = load_or_create_key_file(&data_dir.join(KEY_FILE))?;
        let next = load_or_create_key_file(&data_dir.join(NEXT_KEY_FILE))?;
        Ok((Keyring::from_master(&current), Keyring::from_master(&next)))
    }

    /// Makes the next key the master key (an atomic rename, then the
    /// directory is synced).
    pub fn finish_rotation(data_dir: &Path) -> Result<(), KeyError> {
        let target = data_dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: target.clone(),
            source,
        };
        std::fs::rename(data_dir.join(NEXT_KEY_FILE), &target).map_err(io)?;
        // An operator's rotation made this key on purpose.
        let _ = std::fs::remove_file(data_dir.join(GENERATED_MARKER));
        std::fs::File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io)
    }

    fn from_master(master: &SecretBox<[u8; 32]>) -> Keyring {
        let hkdf = Hkdf::<Sha256>::new(None, master.expose_secret());
        let derive = |label: &[u8]| {
            let mut seed = Zeroizing::new([0u8; 32]);
            hkdf.expand(label, seed.as_mut())
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            SigningKey::from_bytes(&seed)
        };
        let signing = derive(JWT_LABEL);
        let verifying = signing.verifying_key();
        let mut kek = Zeroizing::new([0u8; 32]);
        hkdf.expand(KEK_LABEL, kek.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mut url_key = Box::new([0u8; 32]);
        hkdf.expand(URL_LABEL, url_key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mut cookie_key = Box::new([0u8; 32]);
        hkdf.expand(COOKIE_LABEL, cookie_key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mut instance_backup_key = Box::new([0u8; 32]);
        hkdf.expand(INSTANCE_BACKUP_LABEL, instance_backup_key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mut operator_key = Box::new([0u8; 32]);
        hkdf.expand(OPERATOR_SECRETS_LABEL, operator_key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Keyring {
            signing,
            verifying,
            operator_key: SecretBox::new(operator_key),
            checkpoint: derive(CHECKPOINT_LABEL),
            posture: derive(POSTURE_LABEL),
            kek: Arc::new(LocalKek::new(
                format!("master:{}", fingerprint(kek.as_ref())),
                &kek,
            )),
            url_key: SecretBox::new(url_key),
            cookie_key: SecretBox::new(cookie_key),
            instance_backup_key: SecretBox::new(instance_backup_key),
        }
    }

    /// The name data keys wrapped by this master key carry.
    pub fn master_kek_id(&self) -> &str {
        self.kek.id()
    }

    /// The key-encryption key that wraps tenants' data keys.
    pub fn master_kek(&self) -> Arc<dyn KeyEncryptionKey> {
        self.kek.clone()
    }

    /// HMAC key for signed download URLs (FIL-2).
    pub fn url_signing_key(&self) -> &[u8; 32] {
        self.url_key.expose_secret()
    }

    /// HMAC key for browser session cookies and their CSRF tokens (IAM-5,
    /// NET-4).
    pub fn cookie_signing_key(&self) -> &[u8; 32] {
        self.cookie_key.expose_secret()
    }

    /// Seals operators' second-factor secrets (ACC-3).
    pub fn operator_secret_key(&self) -> DataKey {
        DataKey::new(self.operator_key.expose_secret())
    }

    /// Seals the instance's own snapshots in the backup target (BAK-3).
    pub fn instance_backup_key(&self) -> DataKey {
        DataKey::new(self.instance_backup_key.expose_secret())
    }

    /// Signs posture reports (POS-1); its public half is published.
    pub fn posture_signing_key(&self) -> &SigningKey {
        &self.posture
    }

    /// Signs audit checkpoints (AUD-7); its public half is published.
    pub fn checkpoint_signing_key(&self) -> &SigningKey {
        &self.checkpoint
    }

    pub fn token_signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn token_verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }
}

fn decode_master(b64: &str) -> Result<SecretBox<[u8; 32]>, KeyError> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(b64.trim())
            .map_err(|_| KeyError::Malformed)?,
    );
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Malformed)?;
    Ok(SecretBox::new(Box::new(key)))
}

fn load_or_create_key_file(path: &Path) -> Result<SecretBox<[u8; 32]>, KeyError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(KeyError::LoosePermissions(path.to_owned()));
            }
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
            decode_master(&text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = Zeroizing::new([0u8; 32]);
            getrandom::fill(key.as_mut()).map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let encoded = Zeroizing::new(STANDARD.encode(key.as_ref()));
            // create_new: never overwrite a key another process just wrote.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            file.write_all(encoded.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            tracing::info!(path = %path.display(), "generated a new master key");
            Ok(SecretBox::new(Box::new(*key)))
        }
        Err(e) => Err(io(e)),
    }
}

/// Fills a fresh buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_file_is_created_private_and_reloaded_identically() {
        let dir = std::env::temp_dir().join(format!("sr-key-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = Keyring::load(&dir, None).unwrap();
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Keyring::load(&dir, None).unwrap();
        assert_eq!(first.token_verifying_key(), again.token_verifying_key());
        std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(matches!(
            Keyring::load(&dir, None),
            Err(KeyError::LoosePermissions(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_configured_key_must_be_32_bytes() {
        let short = SecretString::from(STANDARD.encode([1u8; 16]));
        assert!(matches!(
            Keyring::load(Path::new("/nonexistent"), Some(&short)),
            Err(KeyError::Malformed)
        ));
    }
}
