//! WebAuthn (IAM-3 passkeys): the relying party's side of registration and
//! assertion, on the ring the TLS stack builds (no OpenSSL). Credentials
//! travel as the JSON of WebAuthn Level 3 (`PublicKeyCredential.toJSON()`:
//! byte fields in base64url).
//!
//! What is checked, after the W3C recommendation §7:
//! * client data: the ceremony's `type`, the exact challenge this server
//!   issued, and the origin of `public_url` (cross-origin use refused);
//! * authenticator data: the SHA-256 of our RP id, user presence, user
//!   verification where it is required, and for registration the attested
//!   credential (ES256, EdDSA or RS256 keys);
//! * an assertion's signature over the authenticator data and the hash of
//!   the client data, with the key stored at registration; the signature
//!   counter is returned for the caller to compare (a clone detector).
//!
//! Attestation is not asked for (`"none"`): which make of authenticator a
//! user has is not what the control promises, so an attestation statement
//! is neither required nor trusted.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::cbor::Cbor;

/// COSE algorithm ids (RFC 9053) this server verifies.
pub const ES256: i64 = -7;
pub const EDDSA: i64 = -8;
pub const RS256: i64 = -257;

const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;
const FLAG_ED: u8 = 0x80;

/// How long a browser shows its passkey prompt.
const TIMEOUT_MS: u64 = 300_000;

/// Why a passkey response is refused (the reason is safe to show).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WebauthnError(pub String);

fn refuse<T>(why: impl Into<String>) -> Result<T, WebauthnError> {
    Err(WebauthnError(why.into()))
}

/// Who the passkeys are for: the RP id (a host name) and the one origin
/// a ceremony may come from.
#[derive(Clone, Debug)]
pub struct RelyingParty {
    pub id: String,
    pub origin: String,
}

impl RelyingParty {
    /// The relying party of a front end at `public_url`: its host is the
    /// RP id, its scheme, host and port the origin.
    pub fn of_url(public_url: &str) -> Option<RelyingParty> {
        let (scheme, rest) = public_url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next()?,
            None => authority.split(':').next()?,
        };
        if host.is_empty() || !matches!(scheme, "http" | "https") {
            return None;
        }
        Some(RelyingParty {
            id: host.to_ascii_lowercase(),
            origin: format!("{scheme}://{}", authority.to_ascii_lowercase()),
        })
    }
}

/// A public key as registered: its COSE algorithm and what ring verifies
/// with (an uncompressed P-256 point, an Ed25519 key, or RSA's n and e).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub alg: i64,
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(default, with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub exponent: Vec<u8>,
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// base64url as a browser or library may send it: with or without padding.
pub fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

pub fn encode_b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The options of `navigator.credentials.create()` for a new passkey.
pub fn creation_options(
    rp: &RelyingParty,
    rp_name: &str,
    user_handle: &[u8],
    user_name: &str,
    challenge: &[u8],
    exclude: &[Vec<u8>],
) -> Value {
    let params: Vec<Value> = [ES256, EDDSA, RS256]
        .iter()
        .map(|alg| json!({"type": "public-key", "alg": alg}))
        .collect();
    let exclude: Vec<Value> = exclude
        .iter()
        .map(|id| json!({"type": "public-key", "id": encode_b64url(id)}))
        .collect();
    json!({"publicKey": {
        "rp": {"id": rp.id, "name": rp_name},
        "user": {"id": encode_b64url(user_handle), "name": user_name, "displayName": user_name},
        "challenge": encode_b64url(challenge),
        "pubKeyCredParams": params,
        "timeout": TIMEOUT_MS,
        "attestation": "none",
        "authenticatorSelection": {"residentKey": "preferred", "userVerification": "preferred"},
        "excludeCredentials": exclude,
    }})
}

/// The options of `navigator.credentials.get()`: for the given credentials,
/// or (none given) any passkey of this RP the authenticator holds.
pub fn request_options(
    rp: &RelyingParty,
    challenge: &[u8],
    allow: &[Vec<u8>],
    user_verification: bool,
) -> Value {
    let allow: Vec<Value> = allow
        .iter()
        .map(|id| json!({"type": "public-key", "id": encode_b64url(id)}))
        .collect();
    json!({"publicKey": {
        "rpId": rp.id,
        "challenge": encode_b64url(challenge),
        "timeout": TIMEOUT_MS,
        "userVerification": if user_verification { "required" } else { "preferred" },
        "allowCredentials": allow,
    }})
}

/// A registration that passed.
#[derive(Debug)]
pub struct Registered {
    pub credential_id: Vec<u8>,
    pub public_key: PublicKey,
    pub sign_count: u32,
}

/// An assertion that passed.
#[derive(Debug)]
pub struct Asserted {
    pub sign_count: u32,
    pub user_verified: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(default)]
    cross_origin: bool,
}

/// A field of the credential's JSON, base64url-decoded.
fn field(credential: &Value, path: &[&str]) -> Result<Vec<u8>, WebauthnError> {
    let mut at = credential;
    for key in path {
        at = at
            .get(key)
            .ok_or_else(|| WebauthnError(format!("{} is missing", path.join("."))))?;
    }
    at.as_str()
        .and_then(decode_b64url)
        .ok_or_else(|| WebauthnError(format!("{} is not base64url", path.join("."))))
}

/// The credential id a response names (`rawId`, else `id`).
pub fn credential_id(credential: &Value) -> Result<Vec<u8>, WebauthnError> {
    if credential.get("type").and_then(Value::as_str) != Some("public-key") {
        return refuse("type is not \"public-key\"");
    }
    field(credential, &["rawId"]).or_else(|_| field(credential, &["id"]))
}

/// The user handle an assertion names, if any.
pub fn user_handle(credential: &Value) -> Option<Vec<u8>> {
    field(credential, &["response", "userHandle"]).ok()
}

fn check_client_data(
    bytes: &[u8],
    kind: &str,
    rp: &RelyingParty,
    challenge: &[u8],
) -> Result<(), WebauthnError> {
    let data: ClientData = serde_json::from_slice(bytes)
        .map_err(|_| WebauthnError("clientDataJSON is not the client data".into()))?;
    if data.kind != kind {
        return refuse(format!(
            "clientDataJSON is for {:?}, not {kind:?}",
            data.kind
        ));
    }
    let sent = decode_b64url(&data.challenge).unwrap_or_default();
    use subtle::ConstantTimeEq;
    if !bool::from(sent.as_slice().ct_eq(challenge)) {
        return refuse("the challenge is not the one issued");
    }
    if data.origin != rp.origin || data.cross_origin {
        return refuse(format!(
            "the origin {:?} is not {:?}",
            data.origin, rp.origin
        ));
    }
    Ok(())
}

/// Authenticator data's fixed part: flags and counter, after checking the
/// RP id hash and the flags every ceremony needs.
fn check_authenticator_data(
    data: &[u8],
    rp: &RelyingParty,
    require_uv: bool,
) -> Result<(u8, u32), WebauthnError> {
    if data.len() < 37 {
        return refuse("authenticatorData is too short");
    }
    if data[..32] != Sha256::digest(rp.id.as_bytes())[..] {
        return refuse("authenticatorData is for another relying party");
    }
    let flags = data[32];
    if flags & FLAG_UP == 0 {
        return refuse("the user was not present");
    }
    if require_uv && flags & FLAG_UV == 0 {
        return refuse("the authenticator did not verify the user");
    }
    let count = u32::from_be_bytes([data[33], data[34], data[35], data[36]]);
    Ok((flags, count))
}

/// The key of a COSE_Key (RFC 9052 §7) this server can verify with.
fn cose_key(key: &Cbor) -> Result<PublicKey, WebauthnError> {
    let int = |label| key.int_key(label).and_then(Cbor::as_int);
    let bytes = |label| key.int_key(label).and_then(Cbor::as_bytes);
    let alg = int(3).ok_or_else(|| WebauthnError("the key names no algorithm".into()))?;
    let bad = || WebauthnError("the public key does not match its algorithm".into());
    Ok(match (int(1), alg) {
        (Some(2), a) if a == i128::from(ES256) => {
            let (x, y) = (bytes(-2).ok_or_else(bad)?, bytes(-3).ok_or_else(bad)?);
            if int(-1) != Some(1) || x.len() != 32 || y.len() != 32 {
                return Err(bad());
            }
            let mut point = vec![0x04];
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            PublicKey {
                alg: ES256,
                key: point,
                exponent: Vec::new(),
            }
        }
        (Some(1), a) if a == i128::from(EDDSA) => {
            let x = bytes(-2).ok_or_else(bad)?;
            if int(-1) != Some(6) || x.len() != 32 {
                return Err(bad());
            }
            PublicKey {
                alg: EDDSA,
                key: x.to_vec(),
                exponent: Vec::new(),
            }
        }
        (Some(3), a) if a == i128::from(RS256) => {
            let (n, e) = (bytes(-1).ok_or_else(bad)?, bytes(-2).ok_or_else(bad)?);
            if n.len() < 256 || e.is_empty() || e.len() > 4 {
                return Err(bad());
            }
            PublicKey {
                alg: RS256,
                key: n.to_vec(),
                exponent: e.to_vec(),
            }
        }
        _ => return refuse("the key's algorithm is not ES256, EdDSA or RS256"),
    })
}

/// Checks a `navigator.credentials.create()` response to `challenge`.
pub fn verify_registration(
    rp: &RelyingParty,
    challenge: &[u8],
    credential: &Value,
) -> Result<Registered, WebauthnError> {
    let id = credential_id(credential)?;
    let client_data = field(credential, &["response", "clientDataJSON"])?;
    check_client_data(&client_data, "webauthn.create", rp, challenge)?;
    let attestation = field(credential, &["response", "attestationObject"])?;
    let attestation =
        Cbor::decode(&attestation).map_err(|e| WebauthnError(format!("attestationObject: {e}")))?;
    let auth_data = attestation
        .text_key("authData")
        .and_then(Cbor::as_bytes)
        .ok_or_else(|| WebauthnError("attestationObject has no authData".into()))?;
    let (flags, sign_count) = check_authenticator_data(auth_data, rp, false)?;
    if flags & FLAG_AT == 0 || auth_data.len() < 55 {
        return refuse("authenticatorData carries no credential");
    }
    let id_len = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
    let id_end = 55 + id_len;
    if id_len == 0 || id_len > 1023 || auth_data.len() <= id_end {
        return refuse("authenticatorData's credential id is malformed");
    }
    if auth_data[55..id_end] != id[..] {
        return refuse("the credential id is not the one in authenticatorData");
    }
    let (key, used) = Cbor::decode_prefix(&auth_data[id_end..])
        .map_err(|e| WebauthnError(format!("the credential's key: {e}")))?;
    if id_end + used != auth_data.len() && flags & FLAG_ED == 0 {
        return refuse("authenticatorData has bytes after the credential");
    }
    Ok(Registered {
        credential_id: id,
        public_key: cose_key(&key)?,
        sign_count,
    })
}

/// Checks a `navigator.credentials.get()` response to `challenge`, signed
/// by `key`; with `require_uv` the authenticator must have verified the
/// user (a passkey that replaces the password).
pub fn verify_assertion(
    rp: &RelyingParty,
    challenge: &[u8],
    key: &PublicKey,
    credential: &Value,
    require_uv: bool,
) -> Result<Asserted, WebauthnError> {
    credential_id(credential)?;
    let client_data = field(credential, &["response", "clientDataJSON"])?;
    check_client_data(&client_data, "webauthn.get", rp, challenge)?;
    let auth_data = field(credential, &["response", "authenticatorData"])?;
    let (flags, sign_count) = check_authenticator_data(&auth_data, rp, require_uv)?;
    let signature = field(credential, &["response", "signature"])?;
    let mut signed = auth_data;
    signed.extend_from_slice(&Sha256::digest(&client_data));
    use ring::signature as sig;
    let verified = match key.alg {
        ES256 => sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_ASN1, &key.key)
            .verify(&signed, &signature),
        EDDSA => sig::UnparsedPublicKey::new(&sig::ED25519, &key.key).verify(&signed, &signature),
        RS256 => sig::RsaPublicKeyComponents {
            n: &key.key,
            e: &key.exponent,
        }
        .verify(&sig::RSA_PKCS1_2048_8192_SHA256, &signed, &signature),
        _ => return refuse("the stored key's algorithm is unknown"),
    };
    if verified.is_err() {
        return refuse("the signature does not verify");
    }
    Ok(Asserted {
        sign_count,
        user_verified: flags & FLAG_UV != 0,
    })
}

/// Whether a signature counter shows a cloned authenticator: it must grow,
/// unless the authenticator keeps none (both zero).
pub fn counter_ok(stored: i64, presented: u32) -> bool {
    i64::from(presented) > stored || (presented == 0 && stored == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    fn rp() -> RelyingParty {
        RelyingParty::of_url("https://app.example.com:8443/base").unwrap()
    }

    /// A minimal CBOR writer for the test authenticator.
    fn head(major: u8, n: usize, out: &mut Vec<u8>) {
        match n {
            0..=23 => out.push(major << 5 | n as u8),
            24..=255 => out.extend([major << 5 | 24, n as u8]),
            _ => {
                out.push(major << 5 | 25);
                out.extend((n as u16).to_be_bytes());
            }
        }
    }

    fn int(n: i64, out: &mut Vec<u8>) {
        if n >= 0 {
            head(0, n as usize, out)
        } else {
            head(1, (-1 - n) as usize, out)
        }
    }

    fn bytes(b: &[u8], out: &mut Vec<u8>) {
        head(2, b.len(), out);
        out.extend_from_slice(b);
    }

    fn text(t: &str, out: &mut Vec<u8>) {
        head(3, t.len(), out);
        out.extend_from_slice(t.as_bytes());
    }

    struct Soft {
        pair: EcdsaKeyPair,
        id: Vec<u8>,
    }

    impl Soft {
        fn new() -> Soft {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            Soft {
                pair,
                id: vec![7; 16],
            }
        }

        fn client_data(kind: &str, challenge: &[u8], origin: &str) -> Vec<u8> {
            serde_json::to_vec(&json!({"type": kind, "challenge": encode_b64url(challenge),
                                       "origin": origin}))
            .unwrap()
        }

        fn create(&self, rp_id: &str, challenge: &[u8], origin: &str) -> Value {
            let point = self.pair.public_key().as_ref();
            let mut key = Vec::new();
            head(5, 5, &mut key);
            int(1, &mut key);
            int(2, &mut key);
            int(3, &mut key);
            int(-7, &mut key);
            int(-1, &mut key);
            int(1, &mut key);
            int(-2, &mut key);
            bytes(&point[1..33], &mut key);
            int(-3, &mut key);
            bytes(&point[33..], &mut key);
            let mut auth = Sha256::digest(rp_id.as_bytes()).to_vec();
            auth.push(FLAG_UP | FLAG_AT);
            auth.extend(0u32.to_be_bytes());
            auth.extend([0u8; 16]);
            auth.extend((self.id.len() as u16).to_be_bytes());
            auth.extend(&self.id);
            auth.extend(key);
            let mut att = Vec::new();
            head(5, 3, &mut att);
            text("fmt", &mut att);
            text("none", &mut att);
            text("attStmt", &mut att);
            head(5, 0, &mut att);
            text("authData", &mut att);
            bytes(&auth, &mut att);
            json!({"id": encode_b64url(&self.id), "rawId": encode_b64url(&self.id),
                   "type": "public-key",
                   "response": {
                       "clientDataJSON": encode_b64url(
                           &Soft::client_data("webauthn.create", challenge, origin)),
                       "attestationObject": encode_b64url(&att)}})
        }

        fn get(&self, challenge: &[u8], flags: u8, count: u32) -> Value {
            let client = Soft::client_data("webauthn.get", challenge, &rp().origin);
            let mut auth = Sha256::digest(rp().id.as_bytes()).to_vec();
            auth.push(flags);
            auth.extend(count.to_be_bytes());
            let mut signed = auth.clone();
            signed.extend(Sha256::digest(&client));
            let signature = self.pair.sign(&SystemRandom::new(), &signed).unwrap();
            json!({"id": encode_b64url(&self.id), "rawId": encode_b64url(&self.id),
                   "type": "public-key",
                   "response": {"clientDataJSON": encode_b64url(&client),
                                "authenticatorData": encode_b64url(&auth),
                                "signature": encode_b64url(signature.as_ref())}})
        }
    }

    #[test]
    fn the_relying_party_is_the_public_urls_host_and_origin() {
        let rp = rp();
        assert_eq!(rp.id, "app.example.com");
        assert_eq!(rp.origin, "https://app.example.com:8443");
        assert!(RelyingParty::of_url("ftp://x").is_none());
    }

    #[test]
    fn a_registration_and_its_assertions_verify_and_forgeries_do_not() {
        let (rp, soft) = (rp(), Soft::new());
        let challenge = [9u8; 32];
        let registered = verify_registration(
            &rp,
            &challenge,
            &soft.create(&rp.id, &challenge, &rp.origin),
        )
        .unwrap();
        assert_eq!(registered.credential_id, soft.id);
        assert_eq!(registered.public_key.alg, ES256);
        // Another challenge, origin or RP id is refused.
        for (rp_id, ch, origin) in [
            (rp.id.as_str(), [8u8; 32], rp.origin.as_str()),
            (rp.id.as_str(), challenge, "https://evil.example"),
            ("evil.example", challenge, rp.origin.as_str()),
        ] {
            assert!(
                verify_registration(&rp, &challenge, &soft.create(rp_id, &ch, origin)).is_err()
            );
        }
        let key = registered.public_key;
        let asserted = verify_assertion(
            &rp,
            &challenge,
            &key,
            &soft.get(&challenge, FLAG_UP, 5),
            false,
        )
        .unwrap();
        assert_eq!(asserted.sign_count, 5);
        assert!(!asserted.user_verified);
        // Without user verification where it is required; for another
        // challenge; with a tampered signature or flags.
        assert!(
            verify_assertion(
                &rp,
                &challenge,
                &key,
                &soft.get(&challenge, FLAG_UP, 6),
                true
            )
            .is_err()
        );
        assert!(
            verify_assertion(
                &rp,
                &challenge,
                &key,
                &soft.get(&[1; 32], FLAG_UP, 6),
                false
            )
            .is_err()
        );
        let mut tampered = soft.get(&challenge, FLAG_UP | FLAG_UV, 7);
        let mut auth = field(&tampered, &["response", "authenticatorData"]).unwrap();
        auth[32] = FLAG_UP;
        tampered["response"]["authenticatorData"] = json!(encode_b64url(&auth));
        assert!(verify_assertion(&rp, &challenge, &key, &tampered, false).is_err());
        // Another key's signature.
        let other = Soft::new();
        assert!(
            verify_assertion(
                &rp,
                &challenge,
                &key,
                &other.get(&challenge, FLAG_UP, 8),
                false
            )
            .is_err()
        );
        assert!(counter_ok(4, 5) && !counter_ok(5, 5) && counter_ok(0, 0) && !counter_ok(3, 0));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let rp = rp();
        for credential in [
            json!({}),
            json!({"type": "public-key", "rawId": "AA", "response": {}}),
            json!({"type": "public-key", "rawId": "AA",
                   "response": {"clientDataJSON": "!!", "attestationObject": "AA"}}),
        ] {
            assert!(verify_registration(&rp, &[0; 32], &credential).is_err());
        }
    }
}
