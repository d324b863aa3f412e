//! The one table of stable error codes: machine name, HTTP status and whether a retry can help.
//!
//! Every failure a client can see (an HTTP error body, a failed job's `error`) carries one of
//! these codes. Handlers never pick status codes themselves; they map their error to a code
//! and this table decides the rest.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $variant:ident => ($name:literal, $http:literal, $retryable:literal) ),+ $(,)?) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* $variant, )+
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )+ ];

            /// The stable snake_case name used on the wire.
            pub const fn name(self) -> &'static str {
                match self { $( ErrorCode::$variant => $name, )+ }
            }

            /// The HTTP status an API response with this code carries.
            pub const fn http_status(self) -> u16 {
                match self { $( ErrorCode::$variant => $http, )+ }
            }

            /// Whether the same request may succeed if tried again later.
            pub const fn retryable(self) -> bool {
                match self { $( ErrorCode::$variant => $retryable, )+ }
            }

            /// Looks a code up by its wire name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $( $name => Some(ErrorCode::$variant), )+ _ => None }
            }
        }
    };
}

error_codes! {
    /// The job (or request body) is malformed or breaks a limit.
    InvalidSpec => ("invalid_spec", 400, false),
    /// A path or query value of the request is malformed (a job id that is not a UUID, `limit=x`).
    InvalidRequest => ("invalid_request", 400, false),
    /// No or an unknown API key.
    Unauthorized => ("unauthorized", 401, false),
    /// The key is valid but may not do this (e.g. admin endpoints).
    Forbidden => ("forbidden", 403, false),
    /// No such job (or it belongs to another tenant).
    NotFound => ("not_found", 404, false),
    /// The request conflicts with the job's current state (e.g. cancel a finished job).
    Conflict => ("conflict", 409, false),
    /// The route exists, but not for this method (the `Allow` header lists those it has).
    MethodNotAllowed => ("method_not_allowed", 405, false),
    /// The body is larger than the configured limit.
    PayloadTooLarge => ("payload_too_large", 413, false),
    /// The body is not sent as JSON (`Content-Type: application/json`).
    UnsupportedMediaType => ("unsupported_media_type", 415, false),
    /// A LoRA name is not in the worker's library.
    UnknownLora => ("unknown_lora", 422, false),
    /// A LoRA given by `url` could not be fetched (refused by the worker's policy, not found,
    /// too large, or the host failed). A job's error says `retryable: true` only when the host
    /// answered 5xx (or 408/429), timed out or could not be reached.
    LoraFetchFailed => ("lora_fetch_failed", 422, false),
    /// The file at a LoRA's `url` does not have the job's `sha256`.
    LoraDigestMismatch => ("lora_digest_mismatch", 422, false),
    /// A ControlNet model name is not in the worker's library.
    UnknownControlnet => ("unknown_controlnet", 422, false),
    /// The control image could not be fetched or decoded.
    InvalidControlImage => ("invalid_control_image", 422, false),
    /// The job asks for a webhook, but webhooks are off in this deployment (`webhooks.enabled`)
    /// or its tenant has no webhook secret (`tenants.<name>.webhooks.secret`).
    WebhookNotAllowed => ("webhook_not_allowed", 422, false),
    /// Too many jobs in flight for this tenant or queue; try again later.
    RateLimited => ("rate_limited", 429, true),
    /// The tenant is over one of its quotas (`[tenants.<name>.quota]`); the message names it and
    /// when it resets.
    QuotaExceeded => ("quota_exceeded", 429, true),
    /// The request target (path and query) is longer than the dispatcher accepts.
    UriTooLong => ("uri_too_long", 414, false),
    /// The request's headers are larger than the dispatcher accepts.
    HeadersTooLarge => ("headers_too_large", 431, false),
    /// No worker pool serves this model.
    ModelUnavailable => ("model_unavailable", 503, true),
    /// RabbitMQ refused or did not confirm the publish.
    QueueUnavailable => ("queue_unavailable", 503, true),
    /// Redis could not be reached.
    StatusUnavailable => ("status_unavailable", 503, true),
    /// S3 could not be reached or refused the upload.
    StorageUnavailable => ("storage_unavailable", 503, true),
    /// The device ran out of memory for this batch.
    Oom => ("oom", 507, true),
    /// The job exceeded its time limit.
    Timeout => ("timeout", 504, true),
    /// The model produced NaN or infinite values; nothing was uploaded.
    InvalidOutput => ("invalid_output", 500, true),
    /// The job was cancelled by its owner.
    Cancelled => ("cancelled", 409, false),
    /// The job kept failing its workers and was dead-lettered.
    DeadLettered => ("dead_lettered", 500, false),
    /// Anything else; a bug or an unexpected failure.
    Internal => ("internal", 500, true),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_lookup() {
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.name()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert_eq!(ErrorCode::from_name(code.name()), Some(code));
        }
    }

    #[test]
    fn statuses_are_client_or_server_errors() {
        for &code in ErrorCode::ALL {
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert!(!ErrorCode::InvalidSpec.retryable());
    }
}
