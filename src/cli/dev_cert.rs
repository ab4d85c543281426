//! `strongroom dev-cert`: a self-signed certificate for trying HTTPS on one
//! machine (ENC-1). Not for production: no client trusts it unless told to.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// The names the certificate is good for.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Writes `out/cert.pem` and `out/key.pem` (the key readable by its owner
/// only) and returns their paths.
pub fn write(out: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let names: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
    let generated =
        rcgen::generate_simple_self_signed(names).context("cannot generate a certificate")?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert = out.join("cert.pem");
    let key = out.join("key.pem");
    std::fs::write(&cert, generated.cert.pem())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .with_context(|| format!("cannot write {}", key.display()))?;
    // An existing file keeps its mode on open: make it the owner's alone.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(generated.key_pair.serialize_pem().as_bytes())?;
    Ok((cert, key))
}
