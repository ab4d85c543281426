//! The signed posture report (POS-1): the report as one JSON document —
//! instance, version, time, every control's status, verdict and evidence —
//! signed with an Ed25519 key derived from the master key (as the audit
//! checkpoints are). The signature covers the report's canonical text (keys
//! sorted, no spaces), so a saved file may be re-indented but not edited.
//! The public key is at `GET /api/v1/posture/key`; `strongroom posture
//! check FILE` verifies a saved report offline.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{Value, json};

use super::Reported;

/// What a signature is over: this prefix, then the canonical report.
const CONTEXT: &[u8] = b"strongroom-posture-report/v1\n";

/// The report signed: `{"report": …, "signature": …, "public_key": …}`.
/// `scope` says whom it covers: `"instance"`, or `{"tenant": …}`.
pub fn sign(key: &SigningKey, node: &str, scope: Value, report: &[Reported]) -> Value {
    let body = json!({
        "format": "strongroom-posture-report/v1",
        "version": crate::VERSION,
        "node": node,
        "scope": scope,
        "generated_at": crate::clock::now(),
        "controls": report,
    });
    let signature = key.sign(&message(&body));
    json!({
        "report": body,
        "algorithm": "Ed25519",
        "public_key": STANDARD.encode(key.verifying_key().as_bytes()),
        "signature": STANDARD.encode(signature.to_bytes()),
    })
}

fn message(report: &Value) -> Vec<u8> {
    // serde_json's maps keep their keys sorted: the text is canonical.
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(report.to_string().as_bytes());
    message
}

/// Why a saved report does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    #[error("not a signed posture report: {0}")]
    Malformed(String),
    #[error("signed by another key than the one expected")]
    OtherKey,
    #[error("the signature does not match: the report was changed after it was signed")]
    Altered,
}

/// Checks a signed report against `expected` (the instance's published
/// key), or against the key it names when none is given.
pub fn check(document: &str, expected: Option<&VerifyingKey>) -> Result<Value, CheckError> {
    let doc: Value =
        serde_json::from_str(document).map_err(|e| CheckError::Malformed(e.to_string()))?;
    let field = |name: &str| {
        doc[name]
            .as_str()
            .ok_or_else(|| CheckError::Malformed(format!("no {name}")))
    };
    let decode = |name: &str| {
        field(name).and_then(|text| {
            STANDARD
                .decode(text)
                .map_err(|_| CheckError::Malformed(format!("{name} is not base64")))
        })
    };
    let named: [u8; 32] = decode("public_key")?
        .try_into()
        .map_err(|_| CheckError::Malformed("a public key is 32 bytes".into()))?;
    let named =
        VerifyingKey::from_bytes(&named).map_err(|_| CheckError::Malformed("bad key".into()))?;
    if expected.is_some_and(|expected| expected != &named) {
        return Err(CheckError::OtherKey);
    }
    let signature: [u8; 64] = decode("signature")?
        .try_into()
        .map_err(|_| CheckError::Malformed("a signature is 64 bytes".into()))?;
    let report = doc
        .get("report")
        .filter(|r| r.is_object())
        .ok_or_else(|| CheckError::Malformed("no report".into()))?;
    named
        .verify(&message(report), &Signature::from_bytes(&signature))
        .map_err(|_| CheckError::Altered)?;
    Ok(report.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_report_verifies_reindented_and_fails_once_edited() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let report = vec![Reported {
            id: "AUD-7".into(),
            title: "t".into(),
            status: super::super::Status::Enforced,
            verdict: Some(super::super::Verdict::Pass),
            evidence: Some("1 tenants' chains verified now".into()),
        }];
        let signed = sign(&key, "node-1", json!("instance"), &report);
        let pretty = serde_json::to_string_pretty(&signed).unwrap();
        assert!(check(&pretty, Some(&key.verifying_key())).is_ok());
        let edited = pretty.replace("\"pass\"", "\"fail\"");
        assert_eq!(check(&edited, None), Err(CheckError::Altered));
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(check(&pretty, Some(&other)), Err(CheckError::OtherKey));
        assert!(matches!(check("{}", None), Err(CheckError::Malformed(_))));
    }
}
