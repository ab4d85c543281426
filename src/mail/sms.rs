//! SMS one-time codes (IAM-3) through a pluggable sender. The one that
//! ships posts to an HTTP webhook the operator runs in front of their SMS
//! provider: `POST sms_webhook_url` with `{"to", "text"}` as JSON and
//! `X-Strongroom-Signature: sha256=<hex HMAC-SHA-256 of the body under
//! sms_webhook_secret>`, so the webhook can tell the message is ours. Any
//! 2xx answer is delivery; anything else is an error the user sees as
//! "could not send".

use std::time::Duration;

use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Who sends a text message.
pub trait SmsSender: Send + Sync {
    fn send<'a>(&'a self, to: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// The HTTP webhook sender.
pub struct Webhook {
    url: String,
    secret: SecretString,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(url: &str, secret: SecretString) -> Result<Webhook, String> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!("sms_webhook_url {url:?} is not an http(s) URL"));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("sms webhook client: {e}"))?;
        Ok(Webhook {
            url: url.to_owned(),
            secret,
            client,
        })
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl SmsSender for Webhook {
    fn send<'a>(&'a self, to: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&serde_json::json!({"to": to, "text": text}))
                .map_err(|e| e.to_string())?;
            let res = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-strongroom-signature", signature(&self.secret, &body))
                .body(body)
                .send()
                .await
                // Without the URL or the message in the error: only what
                // kind of failure it was.
                .map_err(|e| {
                    if e.is_timeout() {
                        "the SMS webhook timed out".to_owned()
                    } else {
                        "the SMS webhook could not be reached".to_owned()
                    }
                })?;
            if res.status().is_success() {
                Ok(())
            } else {
                Err(format!(
                    "the SMS webhook answered {}",
                    res.status().as_u16()
                ))
            }
        })
    }
}

/// A phone number as E.164: `+`, then 8 to 15 digits (spaces, dashes and
/// brackets as typed are dropped).
pub fn parse_phone(text: &str) -> Option<String> {
    let kept: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let digits = kept.strip_prefix('+')?;
    ((8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0'))
    .then_some(kept)
}

/// The number as shown to admins and in lists: its last three digits.
pub fn masked(phone: &str) -> String {
    let tail: String = phone
        .chars()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("+…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_e164() {
        assert_eq!(
            parse_phone("+420 601 234 567").as_deref(),
            Some("+420601234567")
        );
        assert_eq!(
            parse_phone("+1 (555) 010-9999").as_deref(),
            Some("+15550109999")
        );
        for bad in [
            "601234567",
            "+0123456789",
            "+12",
            "+42060123456789012",
            "+420abc12345",
        ] {
            assert!(parse_phone(bad).is_none(), "{bad}");
        }
        assert_eq!(masked("+420601234567"), "+…567");
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let secret = SecretString::from("Jefe".to_owned());
        assert_eq!(
            signature(&secret, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
