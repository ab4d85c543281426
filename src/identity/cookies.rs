//! Browser sessions (IAM-5) and their CSRF protection (NET-4). `POST
//! /auth/login {…, "mode": "cookie"}` answers with a `__Host-` session
//! cookie (Secure, HttpOnly, SameSite=Lax, Path=/) instead of tokens in the
//! body, so no script ever holds a credential. The cookie names its session
//! and is signed with a key derived from the master key; the session row
//! stays the one kill switch (logout, revocation, a disabled user or tenant,
//! the tenant's bounds end it as they end tokens). Every unsafe request
//! authenticated by the cookie must carry `X-CSRF-Token`, an HMAC of the
//! session id that the login answer and a readable `__Host-sr_csrf` cookie
//! hand to the page (signed double submit): another site can make the
//! browser send the cookie, never read or forge the token. A new login is
//! a new session and a new cookie, so a cookie planted before login is
//! worth nothing after it (no fixation).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The session cookie; `__Host-` makes the browser insist on Secure, Path=/
/// and no Domain.
pub const SESSION_COOKIE: &str = "__Host-sr_session";
/// The CSRF token, readable by the page's script.
pub const CSRF_COOKIE: &str = "__Host-sr_csrf";
/// The header an unsafe request carries the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a valid session cookie names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSession {
    pub tenant: String,
    pub session: String,
    pub user: String,
}

fn mac(key: &[u8; 32], purpose: &str, parts: &[&str]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(purpose.as_bytes());
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac
}

/// The cookie's value: `tenant.session.user.signature`.
pub fn session_cookie(key: &[u8; 32], session: &CookieSession) -> String {
    let parts = [
        session.tenant.as_str(),
        session.session.as_str(),
        session.user.as_str(),
    ];
    let signature =
        crate::audit::chain::to_hex(&mac(key, "session-cookie", &parts).finalize().into_bytes());
    format!("{}.{}.{}.{signature}", parts[0], parts[1], parts[2])
}

/// The session a cookie value names, if its signature holds.
pub fn open_session_cookie(key: &[u8; 32], value: &str) -> Option<CookieSession> {
    let mut parts = value.split('.');
    let (tenant, session, user, signature) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let signature = crate::audit::chain::from_hex(signature)?;
    mac(key, "session-cookie", &[tenant, session, user])
        .verify_slice(&signature)
        .ok()?;
    Some(CookieSession {
        tenant: tenant.to_owned(),
        session: session.to_owned(),
        user: user.to_owned(),
    })
}

/// The CSRF token of a session.
pub fn csrf_token(key: &[u8; 32], session: &str) -> String {
    crate::audit::chain::to_hex(&mac(key, "csrf", &[session]).finalize().into_bytes())
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_matches(key: &[u8; 32], session: &str, presented: &str) -> bool {
    crate::audit::chain::from_hex(presented)
        .is_some_and(|bytes| mac(key, "csrf", &[session]).verify_slice(&bytes).is_ok())
}

/// The `Set-Cookie` values of a new browser session.
pub fn set_cookies(key: &[u8; 32], session: &CookieSession, max_age_seconds: i64) -> [String; 2] {
    [
        format!(
            "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age_seconds}",
            session_cookie(key, session)
        ),
        format!(
            "{CSRF_COOKIE}={}; Path=/; Secure; SameSite=Lax; Max-Age={max_age_seconds}",
            csrf_token(key, &session.session)
        ),
    ]
}

/// The `Set-Cookie` values that end a browser session in the browser.
pub fn clear_cookies() -> [String; 2] {
    [
        format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"),
        format!("{CSRF_COOKIE}=; Path=/; Secure; SameSite=Lax; Max-Age=0"),
    ]
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_and_its_csrf_token_hold_only_for_their_session_and_key() {
        let key = [7u8; 32];
        let session = CookieSession {
            tenant: "t".into(),
            session: "s".into(),
            user: "u".into(),
        };
        let value = session_cookie(&key, &session);
        assert_eq!(open_session_cookie(&key, &value), Some(session.clone()));
        assert_eq!(open_session_cookie(&[8u8; 32], &value), None);
        assert_eq!(
            open_session_cookie(&key, &value.replacen("t.", "x.", 1)),
            None
        );
        assert_eq!(open_session_cookie(&key, "t.s.u"), None);
        let csrf = csrf_token(&key, "s");
        assert!(csrf_matches(&key, "s", &csrf));
        assert!(!csrf_matches(&key, "other", &csrf));
        assert!(!csrf_matches(&key, "s", "zz"));
        assert_eq!(
            cookie_value("a=1; __Host-sr_session=v; b=2", SESSION_COOKIE),
            Some("v")
        );
        assert_eq!(cookie_value("a=1", SESSION_COOKIE), None);
    }
}
