//! Credentials handed to clients.
//!
//! * Opaque tokens (invitations, refresh tokens, password resets, devices,
//!   "this wasn't me" links): `sr_<kind>_<tenant>_<secret>`
//!   with 256 random bits. The tenant part lets the server find the right
//!   tenant scope; only a SHA-256 of the whole token is stored, so a database
//!   leak yields no usable token. The recognisable prefix lets secret
//!   scanners find leaked tokens.
//! * Access tokens: JWTs (RFC 7519) signed with Ed25519 (`alg: EdDSA`,
//!   RFC 8037). We accept exactly the header we issue, so `alg: none`, HMAC
//!   confusion and other algorithm games are refused before any crypto runs.
//!   They live 60 seconds (IAM-5).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::context::TenantId;

pub const ACCESS_TOKEN_TTL_SECONDS: i64 = 60;
/// Clock skew tolerated for `iat` in the future.
const LEEWAY_SECONDS: i64 = 5;
/// base64url of `{"alg":"EdDSA","typ":"JWT"}`.
const JWT_HEADER: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Invitation,
    Refresh,
    PasswordReset,
    Device,
    NotMe,
    MfaChallenge,
    /// An API key (ACC-1).
    ApiKey,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Invitation => "sr_inv_",
            TokenKind::Refresh => "sr_rt_",
            TokenKind::PasswordReset => "sr_pwr_",
            TokenKind::Device => "sr_dev_",
            TokenKind::NotMe => "sr_nm_",
            TokenKind::MfaChallenge => "sr_mfa_",
            TokenKind::ApiKey => "sr_key_",
        }
    }
}

/// A freshly generated or presented opaque token.
pub struct OpaqueToken {
    tenant: TenantId,
    text: SecretString,
}

impl OpaqueToken {
    pub fn generate(kind: TokenKind, tenant: TenantId) -> OpaqueToken {
        let secret = crate::crypto::random_bytes::<32>();
        let text = format!(
            "{}{}_{}",
            kind.prefix(),
            tenant.as_uuid().simple(),
            URL_SAFE_NO_PAD.encode(secret)
        );
        OpaqueToken {
            tenant,
            text: SecretString::from(text),
        }
    }

    /// `None` for anything that is not a well-formed token of `kind`.
    pub fn parse(kind: TokenKind, text: &str) -> Option<OpaqueToken> {
        let rest = text.strip_prefix(kind.prefix())?;
        let (tenant, secret) = (rest.get(..32)?, rest.get(32..)?);
        let secret = secret.strip_prefix('_')?;
        if secret.len() != 43 || URL_SAFE_NO_PAD.decode(secret).is_err() {
            return None;
        }
        let tenant = TenantId::parse(tenant)?;
        Some(OpaqueToken {
            tenant,
            text: SecretString::from(text.to_owned()),
        })
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// What the database stores and looks up.
    pub fn hash(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.text.expose_secret().as_bytes()))
    }

    /// The token itself, for the one response that hands it out.
    pub fn reveal(&self) -> String {
        self.text.expose_secret().to_owned()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user id.
    pub sub: String,
    /// The tenant id.
    pub tid: String,
    /// The session id.
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

impl AccessClaims {
    pub fn new(user_id: &str, tenant_id: &str, session_id: &str) -> AccessClaims {
        let now = crate::clock::unix_now();
        AccessClaims {
            sub: user_id.to_owned(),
            tid: tenant_id.to_owned(),
            sid: session_id.to_owned(),
            iat: now,
            exp: now + ACCESS_TOKEN_TTL_SECONDS,
            jti: Uuid::new_v4().simple().to_string(),
        }
    }
}

pub fn sign_access_token(key: &SigningKey, claims: &AccessClaims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims always serialize");
    let mut token = String::with_capacity(200);
    token.push_str(JWT_HEADER);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
    token
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenRejection {
    Malformed,
    BadSignature,
    Expired,
}

/// Verifies header, signature and lifetime; `now` is Unix seconds.
pub fn verify_access_token(
    key: &VerifyingKey,
    token: &str,
    now: i64,
) -> Result<AccessClaims, TokenRejection> {
    let (signed, signature) = token.rsplit_once('.').ok_or(TokenRejection::Malformed)?;
    let (header, payload) = signed.split_once('.').ok_or(TokenRejection::Malformed)?;
    if header != JWT_HEADER {
        return Err(TokenRejection::Malformed);
    }
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(TokenRejection::Malformed)?;
    key.verify_strict(signed.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| TokenRejection::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenRejection::Malformed)?;
    let claims: AccessClaims =
        serde_json::from_slice(&payload).map_err(|_| TokenRejection::Malformed)?;
    if claims.exp <= now || claims.iat > now + LEEWAY_SECONDS {
        return Err(TokenRejection::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn header_constant_is_the_eddsa_header() {
        let decoded = URL_SAFE_NO_PAD.decode(JWT_HEADER).unwrap();
        assert_eq!(decoded, br#"{"alg":"EdDSA","typ":"JWT"}"#);
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let claims = AccessClaims::new("u", "t", "s");
        let token = sign_access_token(&key(), &claims);
        let vk = key().verifying_key();
        assert_eq!(
            verify_access_token(&vk, &token, claims.iat),
            Ok(claims.clone())
        );
        assert_eq!(
            verify_access_token(&vk, &token, claims.iat + 60),
            Err(TokenRejection::Expired)
        );
    }

    #[test]
    fn alg_none_and_tampering_are_refused() {
        let claims = AccessClaims::new("u", "t", "s");
        let token = sign_access_token(&key(), &claims);
        let vk = key().verifying_key();
        let (_, rest) = token.split_once('.').unwrap();
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let (payload, _) = rest.split_once('.').unwrap();
        assert_eq!(
            verify_access_token(&vk, &format!("{none}.{payload}."), claims.iat),
            Err(TokenRejection::Malformed)
        );
        let mut forged = claims.clone();
        forged.sub = "admin".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let signature = token.rsplit_once('.').unwrap().1;
        assert_eq!(
            verify_access_token(
                &vk,
                &format!("{JWT_HEADER}.{forged_payload}.{signature}"),
                claims.iat
            ),
            Err(TokenRejection::BadSignature)
        );
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert_eq!(
            verify_access_token(&other, &token, claims.iat),
            Err(TokenRejection::BadSignature)
        );
    }

    #[test]
    fn opaque_tokens_round_trip_and_name_their_tenant() {
        let tenant = TenantId::parse("0190f0a4-7c1e-7000-8000-000000000001").unwrap();
        let token = OpaqueToken::generate(TokenKind::Refresh, tenant);
        let parsed = OpaqueToken::parse(TokenKind::Refresh, &token.reveal()).unwrap();
        assert_eq!(parsed.tenant(), tenant);
        assert_eq!(parsed.hash(), token.hash());
        assert!(OpaqueToken::parse(TokenKind::Invitation, &token.reveal()).is_none());
        assert!(OpaqueToken::parse(TokenKind::Refresh, "sr_rt_garbage").is_none());
    }
}
