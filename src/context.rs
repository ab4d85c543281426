//! The request context every layer needs and none owns: which tenant,
//! who acts, from where, and the [`Permit`] that says a check passed. It
//! sits below the write path and the domains, so that the imports run one
//! way: http → domains → write path (`store`) → data layer (`store::db`),
//! each taking these types from here (TEN-1: a scope is a type; ACC-1: a
//! permit is a type).

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

/// A tenant's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TenantId(Uuid);

impl TenantId {
    /// A new id, time-ordered (UUIDv7).
    pub(crate) fn generate() -> TenantId {
        TenantId(Uuid::now_v7())
    }

    pub fn parse(text: &str) -> Option<TenantId> {
        Uuid::parse_str(text).ok().map(TenantId)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Proof that the holder may act inside one tenant.
#[derive(Clone, Debug)]
pub struct TenantScope {
    id: TenantId,
    text: Arc<str>,
}

impl TenantScope {
    /// Only the crate's authentication paths and the CLI call this.
    pub(crate) fn trusted(id: TenantId) -> TenantScope {
        TenantScope {
            id,
            text: Arc::from(id.to_string()),
        }
    }

    pub fn tenant_id(&self) -> TenantId {
        self.id
    }

    pub fn id_str(&self) -> &str {
        &self.text
    }
}

/// Who acted.
#[derive(Clone, Debug, Serialize)]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: ActorKind,
    pub id: Option<String>,
    pub email: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Anonymous,
    /// The operator running the CLI on the server.
    Operator,
    /// A scheduled job of the server itself.
    System,
}

impl ActorKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Anonymous => "anonymous",
            ActorKind::Operator => "operator",
            ActorKind::System => "system",
        }
    }
}

impl Actor {
    /// A user of a tenant, by id and e-mail address.
    pub fn user(id: impl Into<String>, email: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::User,
            id: Some(id.into()),
            email: Some(email.into()),
        }
    }

    pub fn anonymous(claimed_email: Option<String>) -> Actor {
        Actor {
            kind: ActorKind::Anonymous,
            id: None,
            email: claimed_email,
        }
    }

    pub fn system(job: &str) -> Actor {
        Actor {
            kind: ActorKind::System,
            id: Some(format!("job:{job}")),
            email: None,
        }
    }

    pub fn operator() -> Actor {
        let name = std::env::var("USER").unwrap_or_else(|_| "cli".to_owned());
        Actor {
            kind: ActorKind::Operator,
            id: Some(format!("cli:{name}")),
            email: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// Where a request came from; filled in by the HTTP layer or the CLI.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl RequestMeta {
    pub fn cli() -> RequestMeta {
        RequestMeta {
            request_id: uuid::Uuid::new_v4().to_string(),
            ip: None,
            user_agent: Some(format!("strongroom-cli/{}", crate::VERSION)),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
}

/// Proof that a permission check passed for one tenant and one actor.
#[derive(Clone, Debug)]
pub struct Permit {
    scope: TenantScope,
    actor: Actor,
}

impl Permit {
    /// The operator at the server's console (CLI): full power over the
    /// tenant it names, recorded as such in the audit trail.
    pub(crate) fn operator(scope: TenantScope, actor: Actor) -> Permit {
        Permit { scope, actor }
    }

    /// The server's own scheduled jobs (retention), recorded as `system`.
    pub(crate) fn system(scope: TenantScope, job: &str) -> Permit {
        Permit {
            scope,
            actor: Actor::system(job),
        }
    }

    /// Login, refresh and invitation acceptance: the presented credential
    /// is the check, and the work itself verifies it.
    pub(crate) fn authentication(scope: TenantScope, actor: Actor) -> Permit {
        Permit { scope, actor }
    }

    /// A signed download link (FIL-2): the verified signature is the check;
    /// the actor is the user who asked for the link.
    pub(crate) fn signed_link(scope: TenantScope, user_id: String) -> Permit {
        Permit {
            scope,
            actor: Actor {
                kind: ActorKind::User,
                id: Some(user_id),
                email: None,
            },
        }
    }

    /// A user acting on their own account (logout, own sessions), or a
    /// user whose role allows the operation ([`crate::access::authorize`]).
    pub(crate) fn user(scope: TenantScope, actor: Actor) -> Permit {
        Permit { scope, actor }
    }

    pub fn scope(&self) -> &TenantScope {
        &self.scope
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}
