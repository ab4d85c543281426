//! Identity: users, invitations, passwords and sessions.
//!
//! * IAM-1: Argon2id password hashes, a password policy, no password in any
//!   log ([`password`]).
//! * IAM-2: staff never set passwords — a new user gets a single-use,
//!   expiring invitation (by mail when a relay is configured) and chooses
//!   their own; resets go by mail link, an admin's reset mails a temporary
//!   password the admin never sees ([`reset`]).
//! * IAM-5: 60-second EdDSA access tokens and rotating refresh tokens with
//!   reuse detection; logout revokes the session ([`sessions`]).
//! * IAM-6: wrong password, unknown user and unknown tenant give the same
//!   `401` after the same Argon2 work; failures slow the next attempt and
//!   lock the account for a while, counted alike for accounts that do not
//!   exist; a known device is counted on its own ([`lockout`]).
//! * IAM-3: TOTP and mailed codes as second factors, recovery codes, a
//!   tenant policy by role, step-up for sensitive operations ([`mfa`]).
//! * IAM-7: devices are remembered; a login from a new one is audited and
//!   mailed with a "this wasn't me" link ([`devices`]).
//! * ACC-1: API keys, a tenant's credentials for programs, acting with the
//!   roles they name ([`api_keys`]).

pub mod api_keys;
mod cbor;
pub mod cookies;
mod devices;
pub(crate) mod http;
pub mod lockout;
pub mod mfa;
pub mod password;
mod post;
mod reset;
mod revoke;
mod sessions;
mod tokens;
pub mod totp;
mod users;
pub mod webauthn;

use std::fmt;

use serde::Serialize;

pub use devices::{
    DEVICE_COOKIE, DEVICE_COOKIE_DAYS, list as list_devices, not_me, untrust as untrust_device,
};
pub use http::{router, sessions_router};
pub use lockout::unlock;
pub use password::{hash as hash_password, warm_up};
pub use post::Post;
pub use reset::{RESET_TTL_MINUTES, admin_reset, change as change_password, request_reset, reset};
pub use sessions::{
    Credentials, LoginOutcome, PasskeyLogin, SESSION_CHECK_TTL, SESSION_KINDS, SecondStep,
    SessionCache, SessionInfo, TokenPair, accept_invitation, authenticate, authenticate_cached,
    authenticate_cookie, complete_login, list_sessions, login, logout, passkey_login,
    passkey_ticket, refresh, revoke_other_sessions, revoke_own_session, revoke_user_sessions,
};
pub use tokens::{ACCESS_TOKEN_TTL_SECONDS, AccessClaims, verify_access_token};
pub use users::{
    User, UserPatch, create_user, delete_user, get_user, list_users, may_still_read, update_user,
};

pub(crate) use users::{invite_user, mail_invitation};

use crate::access::AccessError;
use crate::context::TenantId;
use crate::store::StoreError;
use crate::store::db;
use tokens::{OpaqueToken, TokenKind};

/// A syntactically valid e-mail address, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Email, IdentityError> {
        let text = text.trim().to_lowercase();
        // Lengths in characters, as the API's schema states them.
        let valid = text.chars().count() <= 254
            && text.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && local.chars().count() <= 64
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            })
            && !text
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ','));
        if valid {
            Ok(Email(text))
        } else {
            Err(IdentityError::InvalidEmail)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("not a valid e-mail address")]
    InvalidEmail,
    #[error("password too weak: {0}")]
    WeakPassword(String),
    #[error("wrong tenant, e-mail or password")]
    InvalidCredentials,
    #[error("the token is invalid, expired or already used")]
    InvalidToken,
    #[error("refresh token reuse detected; the session has been revoked")]
    RefreshTokenReuse,
    #[error("missing, invalid or expired access token")]
    Unauthenticated,
    #[error("unknown role {0:?}: use admin, member, viewer or auditor")]
    UnknownRole(String),
    #[error("unknown status {0:?}: use active or disabled")]
    UnknownStatus(String),
    #[error("an invited user becomes active only by accepting the invitation")]
    NotYetAccepted,
    #[error("a user with this e-mail already exists")]
    EmailTaken,
    #[error("user not found")]
    UserNotFound,
    #[error("no such live session of yours")]
    SessionNotFound,
    #[error("the tenant must keep at least one active admin")]
    LastAdmin,
    #[error("mail is off on this instance (no smtp_url): nothing can reach the user alone")]
    MailOff,
    #[error("the user is not active (invited or disabled)")]
    NotActive,
    #[error("change your password first: until then only the change is allowed")]
    PasswordChangeRequired,
    #[error("{}", if *locked { "too many failed logins: this account is locked for now" } else { "too many failed logins: wait before the next attempt" })]
    LockedOut { retry_after: u64, locked: bool },
    #[error("the code is wrong, expired or already used")]
    InvalidCode,
    #[error("no such second factor of yours")]
    NoSuchFactor,
    #[error("this needs a second factor from the last few minutes: POST /api/v1/auth/mfa/step-up")]
    StepUpRequired,
    #[error("the tenant requires a second factor: enrol one (POST /api/v1/auth/mfa/factors) first")]
    MfaEnrolmentRequired,
    #[error("SMS is off on this instance (no sms_webhook_url)")]
    SmsOff,
    #[error("not a phone number in international form (+ and 8 to 15 digits)")]
    InvalidPhone,
    #[error("the text message could not be sent: {0}")]
    SmsNotSent(String),
    #[error(
        "the passkey was not accepted (unknown here, not verified by its user, or the ticket is used or expired)"
    )]
    PasskeyRefused,
    #[error("the passkey response is not valid: {0}")]
    BadPasskey(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Role(#[from] crate::access::roles::RoleError),
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
}

impl From<db::Error> for IdentityError {
    fn from(e: db::Error) -> Self {
        IdentityError::Store(e.into())
    }
}

/// An invitation about to be issued: the token is shown once, to the
/// inviter (or mailed, once a mailer exists), and only its hash is stored.
pub struct NewInvitation {
    token: OpaqueToken,
    pub expires_at: String,
}

impl NewInvitation {
    pub fn generate(tenant: TenantId, ttl_hours: u32) -> NewInvitation {
        NewInvitation {
            token: OpaqueToken::generate(TokenKind::Invitation, tenant),
            expires_at: crate::clock::in_seconds(i64::from(ttl_hours) * 3600),
        }
    }

    pub fn token_text(&self) -> String {
        self.token.reveal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(
            Email::parse(" Anna@Acme.Test ").unwrap().as_str(),
            "anna@acme.test"
        );
        for bad in [
            "",
            "anna",
            "@acme.test",
            "anna@",
            "anna@acme",
            "a b@acme.test",
            "a@b@c.de",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
