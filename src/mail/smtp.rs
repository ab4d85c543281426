//! The SMTP client: `smtp_url` says how to reach the relay —
//! `smtp://host:port` (plain, for a relay on this machine),
//! `smtp+starttls://host:port` (STARTTLS required) or `smtps://host:port`
//! (TLS from the first byte) — with `smtp_username` / `smtp_password` as
//! settings of their own, so the URL never carries a secret.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use super::templates::Rendered;
pub use crate::config::{SmtpRelay as Relay, SmtpSecurity as Security};

/// How long one conversation with the relay may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Why a message was not handed over.
#[derive(Debug)]
pub struct SendError {
    /// The relay refused it for good (a 5xx): trying again will not help.
    pub permanent: bool,
    /// What went wrong, without the addressee or the message.
    pub reason: String,
}

/// The configured relay.
#[derive(Clone)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    relay: Relay,
}

impl Smtp {
    pub fn new(
        url: &str,
        from: &str,
        username: Option<&str>,
        password: Option<&SecretString>,
    ) -> Result<Smtp, String> {
        let relay = Relay::parse(url)?;
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("smtp_from {from:?} is not a mailbox: {e}"))?;
        let mut builder = match relay.security {
            Security::Plain => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&relay.host),
            Security::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&relay.host)
                .map_err(|e| format!("smtp_url: {e}"))?,
            Security::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&relay.host)
                .map_err(|e| format!("smtp_url: {e}"))?,
        }
        .port(relay.port)
        .timeout(Some(TIMEOUT));
        match (username, password) {
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(
                    user.to_owned(),
                    password.expose_secret().to_owned(),
                ));
            }
            (None, None) => {}
            _ => return Err("smtp_username and smtp_password go together".to_owned()),
        }
        Ok(Smtp {
            transport: builder.build(),
            from,
            relay,
        })
    }

    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Hands one message to the relay.
    pub async fn send(&self, to: &str, message: &Rendered) -> Result<(), SendError> {
        let to: Mailbox = to.parse().map_err(|_| SendError {
            permanent: true,
            reason: "the address is not a mailbox".to_owned(),
        })?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                message.text.clone(),
                message.html.clone(),
            ))
            .map_err(|e| SendError {
                permanent: true,
                reason: format!("the message cannot be built: {e}"),
            })?;
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| SendError {
                permanent: e.is_permanent(),
                reason: describe(&e),
            })
    }
}

/// What kind of failure `e` is, and the relay's code if it answered: never
/// its text, which may quote the addressee.
fn describe(e: &lettre::transport::smtp::Error) -> String {
    let kind = if e.is_permanent() {
        "refused"
    } else if e.is_transient() {
        "deferred"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_tls() {
        "TLS failed"
    } else if e.is_client() {
        "client error"
    } else {
        "connection failed"
    };
    match e.status() {
        Some(code) => format!("{kind} ({code})"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_together_and_the_sender_must_parse() {
        let secret = SecretString::from("pw");
        assert!(Smtp::new("smtp://127.0.0.1", "a@b.c", Some("u"), None).is_err());
        assert!(Smtp::new("smtp://127.0.0.1", "a@b.c", None, Some(&secret)).is_err());
        assert!(Smtp::new("smtp://127.0.0.1", "not a mailbox", None, None).is_err());
        assert!(Smtp::new("smtp://127.0.0.1", "Acme <a@b.c>", Some("u"), Some(&secret)).is_ok());
    }
}
