//! Standard Webhooks signatures: `v1,<base64 of HMAC-SHA256 over "<id>.<timestamp>.<body>">`,
//! keyed with the bytes of the tenant's `whsec_<base64>` secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::WebhookError;

/// How far a signed timestamp may be from the verifier's clock (the specification's 5 minutes).
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 300;

/// A signing key, from a `whsec_…` secret. Its bytes never show in a debug print.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_***)")
    }
}

impl Secret {
    /// The key of `whsec_<base64>` (any length; configuration checks 24 to 64 bytes).
    pub fn parse(secret: &str) -> Result<Secret, WebhookError> {
        let encoded = secret.strip_prefix("whsec_").ok_or(WebhookError::BadSecret)?;
        let key = STANDARD.decode(encoded).map_err(|_| WebhookError::BadSecret)?;
        if key.is_empty() {
            return Err(WebhookError::BadSecret);
        }
        Ok(Secret { key })
    }

    /// A key from its bytes.
    pub fn from_bytes(key: Vec<u8>) -> Secret {
        Secret { key }
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value of one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes()))
    }

    /// Checks a delivery as a receiver would: the timestamp within
    /// [`TIMESTAMP_TOLERANCE_SECS`] of `now` and one of the space-separated `v1,` signatures
    /// (compared in constant time) matching.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), WebhookError> {
        let ts: i64 = timestamp.trim().parse().map_err(|_| WebhookError::BadSignature("timestamp is not a number"))?;
        if (now - ts).abs() > TIMESTAMP_TOLERANCE_SECS {
            return Err(WebhookError::BadSignature("timestamp outside the tolerance"));
        }
        for candidate in signatures.split_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else { continue };
            let Ok(expected) = STANDARD.decode(encoded) else { continue };
            if self.mac(id, ts, body).verify_slice(&expected).is_ok() {
                return Ok(());
            }
        }
        Err(WebhookError::BadSignature("no signature matches"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's example (its libraries' shared test vector).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_specifications_test_vector() {
        let secret = Secret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        secret.verify(ID, "1614265330", SIGNATURE, BODY, TIMESTAMP + 10).unwrap();
        // Several signatures (a key rotation): any one matching is enough.
        secret.verify(ID, "1614265330", &format!("v1,AAAA {SIGNATURE}"), BODY, TIMESTAMP).unwrap();
    }

    #[test]
    fn tampering_and_stale_timestamps_refused() {
        let secret = Secret::parse(SECRET).unwrap();
        assert!(secret.verify(ID, "1614265330", SIGNATURE, br#"{"test": 1}"#, TIMESTAMP).is_err());
        assert!(secret.verify("msg_other", "1614265330", SIGNATURE, BODY, TIMESTAMP).is_err());
        assert!(secret.verify(ID, "1614265330", SIGNATURE, BODY, TIMESTAMP + 301).is_err());
        assert!(secret.verify(ID, "soon", SIGNATURE, BODY, TIMESTAMP).is_err());
        let other = Secret::from_bytes(vec![7; 32]);
        assert!(other.verify(ID, "1614265330", SIGNATURE, BODY, TIMESTAMP).is_err());
    }

    #[test]
    fn secrets_parsed_and_never_printed() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_!!").is_err());
        assert!(Secret::parse("whsec_").is_err());
        assert!(!format!("{:?}", Secret::parse(SECRET).unwrap()).contains("MfKQ"));
    }
}
