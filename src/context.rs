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
    /// An API key of the tenant (ACC-1), acting with the roles it names.
    #[serde(rename = "api_key")]
    ApiKey,
}

impl ActorKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Anonymous => "anonymous",
            ActorKind::Operator => "operator",
            ActorKind::System => "system",
            ActorKind::ApiKey => "api_key",
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

    /// An API key, by id and name.
    pub fn api_key(id: impl Into<String>, name: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::ApiKey,
            id: Some(id.into()),
            email: Some(name.into()),
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

/// Which record values a permit shows (ACC-1): the collections whose
/// records it reads, and whether personal and sensitive values come back
/// in the clear or as `"[redacted]"`. Audit diffs of a record show its
/// values only where the permit reads its collection (AUD-2).
#[derive(Clone, Debug)]
pub struct Reach {
    /// `None`: every collection.
    records: Option<Arc<std::collections::BTreeSet<String>>>,
    personal: bool,
}

impl Reach {
    /// Every collection, personal values included: the operator at the
    /// console, the server's jobs, authentication steps.
    pub fn full() -> Reach {
        Reach {
            records: None,
            personal: true,
        }
    }

    pub(crate) fn new(
        records: Option<Arc<std::collections::BTreeSet<String>>>,
        personal: bool,
    ) -> Reach {
        Reach { records, personal }
    }

    /// Whether records of `collection` may be read.
    pub fn reads(&self, collection: &str) -> bool {
        self.records.as_ref().is_none_or(|c| c.contains(collection))
    }

    /// Whether records of every collection may be read.
    pub fn reads_every(&self) -> bool {
        self.records.is_none()
    }

    /// Whether personal and sensitive values are shown.
    pub fn personal(&self) -> bool {
        self.personal
    }
}

/// Proof that a permission check passed for one tenant and one actor.
#[derive(Clone, Debug)]
pub struct Permit {
    scope: TenantScope,
    actor: Actor,
    reach: Reach,
}

impl Permit {
    /// The operator at the server's console (CLI): full power over the
    /// tenant it names, recorded as such in the audit trail.
    pub(crate) fn operator(scope: TenantScope, actor: Actor) -> Permit {
        Permit::with_reach(scope, actor, Reach::full())
    }

    /// The server's own scheduled jobs (retention), recorded as `system`.
    pub(crate) fn system(scope: TenantScope, job: &str) -> Permit {
        Permit::with_reach(scope, Actor::system(job), Reach::full())
    }

    /// Login, refresh and invitation acceptance: the presented credential
    /// is the check, and the work itself verifies it.
    pub(crate) fn authentication(scope: TenantScope, actor: Actor) -> Permit {
        Permit::with_reach(scope, actor, Reach::full())
    }

    /// A signed download link (FIL-2): the verified signature is the check;
    /// the actor is the user who asked for the link.
    pub(crate) fn signed_link(scope: TenantScope, user_id: String) -> Permit {
        let actor = Actor {
            kind: ActorKind::User,
            id: Some(user_id),
            email: None,
        };
        Permit::with_reach(scope, actor, Reach::full())
    }

    /// A user acting on their own account (logout, own sessions): no
    /// permission is needed for that, and it reads no records.
    pub(crate) fn user(scope: TenantScope, actor: Actor) -> Permit {
        Permit::with_reach(scope, actor, Reach::new(Some(Arc::default()), false))
    }

    /// A principal whose roles allow the operation
    /// ([`crate::access::authorize`]), with what those roles read.
    pub(crate) fn with_reach(scope: TenantScope, actor: Actor, reach: Reach) -> Permit {
        Permit {
            scope,
            actor,
            reach,
        }
    }

    pub fn scope(&self) -> &TenantScope {
        &self.scope
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    pub fn reach(&self) -> &Reach {
        &self.reach
    }
}
