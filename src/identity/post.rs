//! Where identity's mails go out from: the mail service, and the vault
//! that seals what it queues.

use crate::crypto::Vault;
use crate::mail::{self, Mailer};
use crate::store::Store;

use super::IdentityError;

/// Where an invitation's or a reset's mail goes out from, if mail is on.
#[derive(Clone)]
pub struct Post {
    pub mailer: std::sync::Arc<Mailer>,
    pub vault: Vault,
}

impl Post {
    /// Whether mails go out: a mailer is configured and the schema has an
    /// outbox.
    pub(crate) fn mail_on(&self, store: &Store) -> bool {
        self.mailer.is_configured() && store.schema_has(mail::SCHEMA)
    }

    /// The tenant's letterhead when mail is on and the schema has an outbox.
    pub(crate) async fn letterhead(
        &self,
        store: &Store,
        scope: &crate::context::TenantScope,
    ) -> Result<Option<mail::Letterhead>, IdentityError> {
        if !self.mail_on(store) {
            return Ok(None);
        }
        Ok(Some(mail::letterhead(store, scope).await?))
    }
}
