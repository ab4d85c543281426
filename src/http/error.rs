//! The one place where errors become HTTP responses: RFC 9457
//! `application/problem+json` with a stable `type`, a human `title` and
//! `detail`, and the request id. A 5xx never shows its cause; the cause is
//! logged with the request id instead (DESIGN.md invariant 6).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::state::REQUEST_ID;
use crate::access::AccessError;
use crate::audit::AuditError;
use crate::crypto::CryptoError;
use crate::identity::IdentityError;
use crate::records::RecordError;
use crate::store::StoreError;
use crate::tenancy::TenancyError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// Stable machine-readable problem type (the last part of the URN).
    kind: &'static str,
    detail: String,
    /// The offending input field, for validation problems.
    field: Option<String>,
    /// Seconds until a refused request may be tried again (`429`).
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn validation(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// An internal failure: logged with its cause, shown without it.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; quote the request id when reporting it",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID.try_with(|id| id.clone()).ok();
        let mut body = json!({
            "type": format!("urn:strongroom:problem:{}", self.kind),
            "title": title(self.status),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "request_id": request_id,
        });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WriterStopped => {
                tracing::error!(error = %e, "write path unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is shutting down or its database is unavailable; retry later",
                )
            }
            other => ApiError::internal(&other),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Denied(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
            AccessError::Store(e) => e.into(),
        }
    }
}

impl From<super::limits::AttemptError> for ApiError {
    fn from(e: super::limits::AttemptError) -> Self {
        match e {
            super::limits::AttemptError::TooMany(e) => e.into(),
            super::limits::AttemptError::Store(e) => e.into(),
        }
    }
}

impl From<super::limits::TooMany> for ApiError {
    fn from(e: super::limits::TooMany) -> Self {
        let seconds = e.retry_after_seconds;
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-requests",
            format!("too many {}; retry in {seconds} s", e.what),
        )
        .with_retry_after(seconds)
    }
}

impl From<crate::tenancy::AllowListError> for ApiError {
    fn from(e: crate::tenancy::AllowListError) -> Self {
        match e {
            crate::tenancy::AllowListError::NotAllowed => {
                ApiError::new(StatusCode::FORBIDDEN, "ip-not-allowed", e.to_string())
            }
            crate::tenancy::AllowListError::Store(e) => e.into(),
        }
    }
}

impl From<TenancyError> for ApiError {
    fn from(e: TenancyError) -> Self {
        match e {
            TenancyError::InvalidSlug
            | TenancyError::InvalidName
            | TenancyError::InvalidSetting(_) => ApiError::validation(e.to_string()),
            TenancyError::SlugTaken => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            TenancyError::InvalidAllowList(_) => {
                ApiError::validation(e.to_string()).with_field("ip_allowlist")
            }
            TenancyError::WouldLockOut(_) => {
                ApiError::new(StatusCode::CONFLICT, "lockout", e.to_string())
                    .with_field("ip_allowlist")
            }
            TenancyError::Store(e) => e.into(),
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        use IdentityError::*;
        match e {
            InvalidEmail => ApiError::validation(e.to_string()).with_field("email"),
            WeakPassword(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "weak-password",
                e.to_string(),
            )
            .with_field("password"),
            UnknownRole(_) => ApiError::validation(e.to_string()).with_field("role"),
            UnknownStatus(_) => ApiError::validation(e.to_string()).with_field("status"),
            PasskeyRefused | InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                e.to_string(),
            ),
            InvalidToken => ApiError::new(StatusCode::UNAUTHORIZED, "invalid-token", e.to_string()),
            RefreshTokenReuse => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "refresh-token-reuse",
                e.to_string(),
            ),
            Unauthenticated => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
            }
            MailOff => ApiError::new(StatusCode::CONFLICT, "mail-off", e.to_string()),
            SmsOff => ApiError::new(StatusCode::CONFLICT, "sms-off", e.to_string()),
            InvalidPhone => ApiError::validation(e.to_string()).with_field("phone"),
            SmsNotSent(_) => ApiError::new(StatusCode::BAD_GATEWAY, "sms-not-sent", e.to_string()),
            BadPasskey(_) => ApiError::validation(e.to_string()).with_field("credential"),
            InvalidCode => ApiError::new(StatusCode::UNAUTHORIZED, "invalid-code", e.to_string()),
            NoSuchFactor => ApiError::not_found(e.to_string()),
            StepUpRequired => {
                ApiError::new(StatusCode::FORBIDDEN, "step-up-required", e.to_string())
            }
            MfaEnrolmentRequired => ApiError::new(
                StatusCode::FORBIDDEN,
                "mfa-enrolment-required",
                e.to_string(),
            ),
            LockedOut {
                retry_after,
                locked,
            } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                if locked {
                    "account-locked"
                } else {
                    "login-throttled"
                },
                format!("{e}; retry in {retry_after} s"),
            )
            .with_retry_after(retry_after),
            PasswordChangeRequired => ApiError::new(
                StatusCode::FORBIDDEN,
                "password-change-required",
                e.to_string(),
            ),
            EmailTaken | LastAdmin | NotYetAccepted | NotActive => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            UserNotFound | SessionNotFound => ApiError::not_found(e.to_string()),
            Internal(_) => ApiError::internal(&e),
            Access(e) => e.into(),
            Store(e) => e.into(),
            Role(e) => e.into(),
            Mail(crate::mail::MailError::Store(e)) => e.into(),
            Mail(crate::mail::MailError::Crypto(e)) => e.into(),
            Mail(e @ crate::mail::MailError::Template(_)) => ApiError::internal(&e),
        }
    }
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        use RecordError::*;
        match e {
            InvalidField { ref field, .. } | UnknownField(ref field) | MissingField(ref field) => {
                let field = field.clone();
                ApiError::validation(e.to_string()).with_field(field)
            }
            InvalidSchema(_) | InvalidQuery(_) | NotAnObject => ApiError::validation(e.to_string()),
            TooManyFilters => ApiError::bad_request(e.to_string()),
            UniqueViolation(ref field) => {
                let field = field.clone();
                ApiError::new(StatusCode::CONFLICT, "unique-violation", e.to_string())
                    .with_field(field)
            }
            CollectionExists => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            CollectionNotFound | RecordNotFound => ApiError::not_found(e.to_string()),
            VersionMismatch => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                e.to_string(),
            ),
            Crypto(e) => e.into(),
            Access(e) => e.into(),
            Store(e) => e.into(),
        }
    }
}

impl From<CryptoError> for ApiError {
    fn from(e: CryptoError) -> Self {
        use CryptoError::*;
        match e {
            KeyRevoked { .. } => ApiError::new(StatusCode::LOCKED, "key-revoked", e.to_string()),
            KeysDestroyed => ApiError::new(StatusCode::GONE, "keys-destroyed", e.to_string()),
            WrongKey { .. } => ApiError::new(StatusCode::CONFLICT, "wrong-key", e.to_string()),
            MalformedKey => ApiError::validation(e.to_string()).with_field("key"),
            Integrity(_) => {
                tracing::error!(error = %e, "stored ciphertext failed its integrity check");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "integrity-error",
                    format!("{e}; nothing was served"),
                )
            }
            UnknownWrappingKey(_) => ApiError::internal(&e),
            Store(e) => e.into(),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::InvalidQuery(_) | AuditError::RetentionOutOfRange => {
                ApiError::validation(e.to_string())
            }
            AuditError::Access(e) => e.into(),
            AuditError::Store(e) => e.into(),
        }
    }
}
