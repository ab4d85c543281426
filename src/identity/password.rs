//! Passwords (IAM-1): Argon2id with the OWASP parameters (m = 19 MiB, t = 2,
//! p = 1), a policy (12–256 characters, and a strength estimate that refuses
//! common, dictionary and user-derived passwords), and verification that
//! costs the same whether or not the account exists (IAM-6: no user
//! enumeration by timing). Hashing runs on its own pool of one thread per
//! core, never on the async workers, and never inside a write transaction.

use std::sync::LazyLock;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};

use super::IdentityError;

const MIN_CHARS: usize = 12;
const MAX_CHARS: usize = 256;
/// zxcvbn score 3 of 4: "safely unguessable: moderate protection from an
/// offline slow-hash scenario".
const MIN_SCORE: u8 = 3;

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP Argon2id parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A hash of a random password, verified against when the account does not
/// exist so that both paths do the same work.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let random = crate::crypto::random_bytes::<24>();
    hash_blocking(&SecretString::from(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        random,
    )))
});

/// Computes the dummy hash ahead of the first login.
pub fn warm_up() {
    LazyLock::force(&DUMMY_HASH);
}

/// Refuses weak passwords; `context` holds words the password must not
/// lean on (the e-mail address, the tenant).
pub fn check_policy(password: &SecretString, context: &[&str]) -> Result<(), IdentityError> {
    let text = password.expose_secret();
    let chars = text.chars().count();
    if chars < MIN_CHARS {
        return Err(IdentityError::WeakPassword(format!(
            "use at least {MIN_CHARS} characters"
        )));
    }
    if chars > MAX_CHARS {
        return Err(IdentityError::WeakPassword(format!(
            "use at most {MAX_CHARS} characters"
        )));
    }
    // The account's own name is the first thing an attacker tries.
    let squash = |t: &str| -> String {
        t.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect()
    };
    let squashed = squash(text);
    for word in context {
        let local = squash(word.split('@').next().unwrap_or(word));
        if local.len() >= 4 && squashed.contains(&local) {
            return Err(IdentityError::WeakPassword(
                "it contains your e-mail address or name".to_owned(),
            ));
        }
    }
    // zxcvbn matches user inputs as whole words; give it the parts of an
    // e-mail address too, so "anna.kowalska@acme" is caught for
    // anna.kowalska@acme.test.
    let words: Vec<&str> = context
        .iter()
        .flat_map(|c| std::iter::once(*c).chain(c.split(|ch: char| !ch.is_alphanumeric())))
        .filter(|w| w.len() >= 3)
        .collect();
    let estimate = zxcvbn::zxcvbn(text, &words);
    if u8::from(estimate.score()) < MIN_SCORE {
        let hint = estimate
            .feedback()
            .and_then(|f| f.warning())
            .map(|w| w.to_string())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "it is too easy to guess".to_owned());
        return Err(IdentityError::WeakPassword(format!(
            "{hint}; add more unrelated words or characters"
        )));
    }
    Ok(())
}

fn hash_blocking(password: &SecretString) -> String {
    let salt = crate::crypto::random_bytes::<16>();
    let argon2 = hasher();
    let mut out = [0u8; 32];
    argon2_into(
        &argon2,
        password.expose_secret().as_bytes(),
        &salt,
        &mut out,
    )
    .expect("Argon2id hashing with valid parameters cannot fail");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params()).expect("OWASP parameters encode"),
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).expect("32 bytes is a valid output length")),
    }
    .to_string()
}

/// True when `password` hashes to `stored` (a PHC string) under the
/// parameters the string names. The comparison is in constant time.
fn matches(password: &[u8], stored: &str) -> bool {
    let check = || -> Option<bool> {
        let parsed = PasswordHash::new(stored).ok()?;
        let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
        let version = match parsed.version {
            Some(v) => Version::try_from(v).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(&parsed).ok()?;
        let expected = parsed.hash?;
        let mut salt = [0u8; 64];
        let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
        let mut out = [0u8; Output::MAX_LENGTH];
        let out = &mut out[..expected.len()];
        argon2_into(
            &Argon2::new(algorithm, version, params),
            password,
            salt,
            out,
        )
        .ok()?;
        Some(Output::new(out).ok()? == expected)
    };
    check().unwrap_or(false)
}

thread_local! {
    /// The Argon2 memory of a hashing-pool thread, kept from one hash to the
    /// next. A fresh 19 MiB per hash cost a page fault per 4 KiB and, through
    /// the allocator's arenas, left hundreds of MiB resident after a burst
    /// of logins. `None` on every other thread.
    static MEMORY: std::cell::RefCell<Option<Vec<Block>>> = const { std::cell::RefCell::new(None) };
}

/// Argon2 into `out`, in this thread's kept memory when it has some.
/// Every block is written before it is read, so reuse is sound.
fn argon2_into(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let needed = argon2.params().block_count();
    MEMORY.with_borrow_mut(|kept| match kept {
        Some(blocks) => {
            if blocks.len() != needed {
                *blocks = vec![Block::default(); needed];
            }
            argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..])
        }
        None => argon2.hash_password_into(password, salt, out),
    })
}

/// Argon2 runs on a fixed pool of one thread per core. Each hash needs
/// 19 MiB: on tokio's blocking pool 32 concurrent logins became 32 threads
/// and gigabytes of retained arenas, for no gain — the CPU is the limit.
struct HashPool {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

static POOL: LazyLock<HashPool> = LazyLock::new(|| {
    let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for i in 0..threads {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name(format!("argon2-{i}"))
            .spawn(move || {
                MEMORY.set(Some(Vec::new()));
                loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })
            .expect("an Argon2 worker thread starts");
    }
    HashPool {
        jobs: std::sync::Mutex::new(jobs),
    }
});

/// Runs `work` on the hashing pool and waits for it without blocking the
/// async workers.
async fn on_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, IdentityError> {
    let (done, result) = tokio::sync::oneshot::channel();
    let queued = &crate::metrics::get().argon2_queued;
    queued.inc();
    let job: Box<dyn FnOnce() + Send> = Box::new(move || {
        let _ = done.send(work());
        crate::metrics::get().argon2_queued.dec();
    });
    POOL.jobs
        .lock()
        .map_err(|_| IdentityError::Internal("password hashing pool failed"))?
        .send(job)
        .map_err(|_| IdentityError::Internal("password hashing pool failed"))?;
    result
        .await
        .map_err(|_| IdentityError::Internal("password hashing task failed"))
}

pub async fn hash(password: SecretString) -> Result<String, IdentityError> {
    on_pool(move || hash_blocking(&password)).await
}

/// True when `password` matches `stored`; with no stored hash it verifies
/// against the dummy hash and returns false, taking the same time.
pub async fn verify(password: SecretString, stored: Option<String>) -> Result<bool, IdentityError> {
    on_pool(move || {
        let (hash, real) = match stored.as_deref() {
            Some(h) => (h, true),
            None => (DUMMY_HASH.as_str(), false),
        };
        let matches = matches(password.expose_secret().as_bytes(), hash);
        matches && real
    })
    .await
}

/// Whether a stored hash is Argon2id with at least the parameters new
/// hashes get (the posture check of IAM-1 reads every stored hash).
pub fn meets_policy(stored: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let param = |name: &str| hash.params.get_decimal(name).map_or(0, u64::from);
    hash.algorithm.as_str() == "argon2id"
        && param("m") >= 19 * 1024
        && param("t") >= 2
        && param("p") >= 1
        && hash.hash.is_some_and(|h| h.len() >= 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hashes_are_held_to_the_parameters_of_new_ones() {
        let strong = hash_blocking(&SecretString::from("correct horse battery staple"));
        assert!(meets_policy(&strong));
        let weak = strong.replace("m=19456", "m=4096");
        assert!(!meets_policy(&weak));
        assert!(!meets_policy("plain-text-password"));
        assert!(!meets_policy(&strong.replace("argon2id", "argon2i")));
    }

    #[test]
    fn short_common_and_self_derived_passwords_are_refused() {
        for weak in ["short", "password1234", "qwertyuiop123", "aaaaaaaaaaaaaaa"] {
            assert!(
                check_policy(&SecretString::from(weak), &[]).is_err(),
                "{weak} accepted"
            );
        }
        assert!(
            check_policy(
                &SecretString::from("anna.kowalska@acme"),
                &["anna.kowalska@acme.test"]
            )
            .is_err()
        );
        assert!(check_policy(&SecretString::from("violet-harbour-tractor-92"), &[]).is_ok());
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hash = hash(SecretString::from("violet-harbour-tractor-92"))
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            verify(
                SecretString::from("violet-harbour-tractor-92"),
                Some(hash.clone())
            )
            .await
            .unwrap()
        );
        assert!(
            !verify(SecretString::from("violet-harbour-tractor-93"), Some(hash))
                .await
                .unwrap()
        );
        assert!(!verify(SecretString::from("anything"), None).await.unwrap());
    }

    /// Our hashes in kept memory are standard PHC strings: the reference
    /// verifier accepts them, ours accepts the crate's own hashes (other
    /// parameters included), and a changed digit or a garbled string fails.
    #[tokio::test]
    async fn kept_memory_hashes_agree_with_the_reference_implementation() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let password = b"violet-harbour-tractor-92";
        let ours = hash(SecretString::from("violet-harbour-tractor-92"))
            .await
            .unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(hasher().verify_password(password, &parsed).is_ok());
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 3, 1, None).unwrap(),
        );
        let theirs = small.hash_password(password, &salt).unwrap().to_string();
        // On the pool, whose kept memory is resized between parameter sets.
        for stored in [&theirs, &ours, &theirs] {
            let stored = stored.clone();
            assert!(on_pool(move || matches(password, &stored)).await.unwrap());
        }
        let digest = ours.rsplit('$').next().unwrap();
        let flipped = if digest.starts_with('A') { "B" } else { "A" };
        let altered = format!(
            "{}{flipped}{}",
            &ours[..ours.len() - digest.len()],
            &digest[1..]
        );
        assert!(!matches(password, &altered));
        assert!(!matches(password, "$argon2id$v=19$m=19456"));
        assert!(!matches(password, "not a hash"));
    }
}
