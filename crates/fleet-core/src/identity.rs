//! What makes two deliveries, republishes or submissions the same job: the id a message maps to,
//! the seed a job id implies, and the digest that tells a retry from a different request.
//!
//! Every rule here is a pure function of its input, so every delivery of a message, every
//! republish and every resume computes the same id and seed, and a producer in another language
//! can compute them too (the README's wire-format section gives the recipes).

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::job::JobSpec;

/// Namespace of the UUIDv5 ids derived from messages that name no job
/// (`uuid5(NAMESPACE, tenant header + "\0" + body)`).
pub const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_5e0a_2d4b_4c3e_9a7f_1b2c_3d4e_5f60);

/// The job id of a message: its body's `id`, else its AMQP `message_id` when that is a UUID, else
/// a UUIDv5 over the tenant header and the body bytes, so that a message that names no job still
/// maps to the same job on every delivery.
///
/// `body_id` is the body's `id` as far as it could be read; `tenant_header` is the message's
/// `x-fleet-tenant` header (part of the derived id: the same body from two tenants is two jobs).
pub fn message_job_id(
    body: &[u8],
    body_id: Option<Uuid>,
    message_id: Option<&str>,
    tenant_header: Option<&str>,
) -> Uuid {
    if let Some(id) = body_id {
        return id;
    }
    if let Some(id) = message_id.and_then(|m| Uuid::try_parse(m.trim()).ok()) {
        return id;
    }
    let mut name = Vec::with_capacity(body.len() + 64);
    name.extend_from_slice(tenant_header.unwrap_or_default().as_bytes());
    name.push(0);
    name.extend_from_slice(body);
    Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &name)
}

/// The seed of a job that brings none: the first 8 bytes of SHA-256 of the id's hyphenated
/// lower-case text, so every delivery, republish and resume of the job draws the same images.
pub fn seed_for(id: Uuid) -> u64 {
    seed_from_digest(&Sha256::digest(id.hyphenated().to_string().as_bytes()))
}

/// A seed from the first 8 bytes (big-endian) of a digest, kept below 2^53 so that JSON readers
/// in any language (JavaScript's numbers) read it exactly.
pub fn seed_from_digest(digest: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    let n = digest.len().min(8);
    first[..n].copy_from_slice(&digest[..n]);
    u64::from_be_bytes(first) >> 11
}

/// Hex SHA-256 of a request as the client sent it, once parsed (defaults filled in): the JSON of
/// `spec` without `tenant` (never the client's to set). The caller leaves out what it assigned
/// (see [`crate::ValidJob::request_digest`]). Object keys serialise sorted, so the digest does not
/// depend on the order of the client's keys.
pub fn request_digest(spec: &JobSpec) -> String {
    let mut hasher = Sha256::new();
    let mut spec = std::borrow::Cow::Borrowed(spec);
    if spec.tenant.is_some() {
        spec.to_mut().tenant = None;
    }
    // A JobSpec always serialises (string keys, finite or null floats); the fallback only keeps
    // this infallible.
    match serde_json::to_vec(&*spec) {
        Ok(json) => hasher.update(&json),
        Err(e) => hasher.update(e.to_string().as_bytes()),
    }
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_id_wins_then_a_uuid_message_id_then_the_derived_id() {
        let (body_id, message_id) = (Uuid::now_v7(), Uuid::now_v7());
        let text = message_id.to_string();
        assert_eq!(message_job_id(b"{}", Some(body_id), Some(&text), None), body_id);
        assert_eq!(message_job_id(b"{}", None, Some(&text), None), message_id);
        let derived = message_job_id(b"{}", None, Some("order-17"), None);
        assert_ne!(derived, message_id, "a message_id that is not a UUID is ignored");
        assert_eq!(derived, message_job_id(b"{}", None, None, None));
        assert_eq!(derived.get_version_num(), 5);
    }

    #[test]
    fn a_derived_id_is_the_same_for_the_same_message_and_differs_with_body_or_tenant() {
        let body = br#"{"v":1,"prompt":"a cat"}"#;
        let once = message_job_id(body, None, None, Some("acme"));
        assert_eq!(once, message_job_id(body, None, None, Some("acme")), "a redelivery is the same job");
        assert_ne!(once, message_job_id(br#"{"v":1,"prompt":"a dog"}"#, None, None, Some("acme")));
        assert_ne!(once, message_job_id(body, None, None, Some("globex")));
        assert_ne!(once, message_job_id(body, None, None, None));
        // The recipe the README gives producers in other languages.
        let name = [b"acme\0".as_slice(), body].concat();
        assert_eq!(once, Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &name));
        assert_eq!(MESSAGE_ID_NAMESPACE.to_string(), "6c1f5e0a-2d4b-4c3e-9a7f-1b2c3d4e5f60", "as documented");
    }

    #[test]
    fn the_seed_of_an_id_is_stable_below_2_53_and_differs_between_ids() {
        let id: Uuid = "0190f0a4-3b7c-7d2e-8f00-0123456789ab".parse().unwrap();
        assert_eq!(seed_for(id), seed_for(id));
        assert_ne!(seed_for(id), seed_for(Uuid::now_v7()));
        for _ in 0..1000 {
            assert!(seed_for(Uuid::new_v4()) < 1 << 53);
        }
        // The recipe the README gives: SHA-256 of the id's text, first 8 bytes, shifted right by 11.
        let digest = Sha256::digest(b"0190f0a4-3b7c-7d2e-8f00-0123456789ab");
        assert_eq!(seed_for(id), u64::from_be_bytes(digest[..8].try_into().unwrap()) >> 11);
    }

    #[test]
    fn the_request_digest_ignores_the_tenant_and_key_order_but_not_the_request() {
        let mut spec = JobSpec::new("a cat");
        spec.metadata.insert("b".into(), 1.into());
        spec.metadata.insert("a".into(), 2.into());
        let digest = request_digest(&spec);
        spec.tenant = Some("mallory".into());
        assert_eq!(request_digest(&spec), digest);
        let reordered: JobSpec =
            serde_json::from_str(r#"{"prompt":"a cat","metadata":{"a":2,"b":1},"steps":4}"#).unwrap();
        assert_eq!(request_digest(&reordered), digest, "key order and spelled-out defaults do not matter");
        spec.steps = 2;
        assert_ne!(request_digest(&spec), digest);
    }
}
