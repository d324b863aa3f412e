//! A job as an AMQP message.
//!
//! Body: the job's JSON (`fleet_core::JobSpec`, wire version `v`). Properties: persistent,
//! `content_type = application/json`, `message_id` = job id, `type` = `fleet.job.v1`. Which job a
//! message stands for is [`job_id`]'s rule.
//! Headers: [`HEADER_TENANT`], [`HEADER_PRIORITY`], [`HEADER_TRACE_ID`]. A producer in another
//! language publishes the same thing (see the README); workers re-validate every message.

use fleet_core::{JobSpec, ValidJob};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Tenant that owns the job (the body's `tenant` wins when both are present).
pub const HEADER_TENANT: &str = "x-fleet-tenant";
/// `interactive` or `bulk`.
pub const HEADER_PRIORITY: &str = "x-fleet-priority";
/// Trace id that follows the job from HTTP to the worker's logs.
pub const HEADER_TRACE_ID: &str = "x-fleet-trace-id";
/// On a message a worker dead-lettered itself: why, as a code (see [`DeadLetterReason`]).
pub const HEADER_DEAD_LETTER_REASON: &str = "x-fleet-dead-letter-reason";
/// On a message a worker dead-lettered itself: what was wrong, in words (e.g. every validation error).
pub const HEADER_DEAD_LETTER_DETAIL: &str = "x-fleet-dead-letter-detail";
/// On a message a worker dead-lettered itself: the queue it came from.
pub const HEADER_DEAD_LETTER_QUEUE: &str = "x-fleet-dead-letter-queue";
/// Hex SHA-256 of the request the job was submitted with ([`ValidJob::request_digest`]): a
/// worker stores it with the job's images, so a record rebuilt from them keeps it.
pub const HEADER_REQUEST_DIGEST: &str = "x-fleet-request-digest";
/// AMQP `type` property of job messages.
pub const MESSAGE_TYPE: &str = "fleet.job.v1";

/// Body and properties of a job message.
pub fn encode(job: &ValidJob, trace_id: &str) -> Result<(Vec<u8>, BasicProperties), serde_json::Error> {
    let spec = job.spec();
    let body = serde_json::to_vec(spec)?;
    let mut headers = FieldTable::default();
    if let Some(tenant) = &spec.tenant {
        headers.insert(ShortString::from(HEADER_TENANT), AMQPValue::LongString(LongString::from(tenant.as_str())));
    }
    headers.insert(ShortString::from(HEADER_PRIORITY), AMQPValue::LongString(LongString::from(spec.priority.as_str())));
    headers.insert(ShortString::from(HEADER_TRACE_ID), AMQPValue::LongString(LongString::from(trace_id)));
    headers.insert(
        ShortString::from(HEADER_REQUEST_DIGEST),
        AMQPValue::LongString(LongString::from(job.request_digest().as_str())),
    );
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_type(ShortString::from(MESSAGE_TYPE))
        .with_headers(headers);
    if let Some(id) = spec.id {
        props = props.with_message_id(ShortString::from(id.to_string()));
    }
    Ok((body, props))
}

/// A string header, if present and a string.
pub fn header_str<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a str> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Why and from where RabbitMQ dead-lettered a message (its newest `x-death` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// `delivery_limit`, `rejected`, `expired` or `maxlen`.
    pub reason: String,
    /// The queue it died in.
    pub queue: String,
    /// How often it died there for this reason.
    pub count: i64,
}

/// The newest `x-death` entry, if the message was dead-lettered.
pub fn death(props: &BasicProperties) -> Option<Death> {
    let AMQPValue::FieldArray(entries) = props.headers().as_ref()?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(newest) = entries.as_slice().first()? else {
        return None;
    };
    let text = |name: &str| match newest.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => String::new(),
    };
    let count = match newest.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        _ => 0,
    };
    Some(Death { reason: text("reason"), queue: text("queue"), count })
}

/// Why a message is in the dead-letter queue, from whoever put it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterReason {
    /// `crashed` (the broker's delivery limit: workers kept dying on it), `invalid_spec` (not a
    /// valid job, or not a job at all: the detail then says `unreadable`), or the broker's own
    /// reason (`rejected`, `expired`, `maxlen`).
    pub code: String,
    /// What happened, in words.
    pub detail: String,
    /// The queue it came from, when known.
    pub queue: Option<String>,
}

/// [`DeadLetterReason::code`] of a message the broker dead-lettered at its delivery limit.
pub const DELIVERY_LIMIT_CODE: &str = "crashed";

/// Why a dead-lettered message died: the worker's reason headers when it dead-lettered the
/// message itself, else the broker's newest `x-death` entry (`delivery_limit` is a job that
/// crashed its workers once more than `rabbitmq.delivery_limit` allows), else `None`.
pub fn dead_letter_reason(props: &BasicProperties) -> Option<DeadLetterReason> {
    if let Some(code) = header_str(props, HEADER_DEAD_LETTER_REASON) {
        return Some(DeadLetterReason {
            code: code.to_owned(),
            detail: header_str(props, HEADER_DEAD_LETTER_DETAIL).unwrap_or_default().to_owned(),
            queue: header_str(props, HEADER_DEAD_LETTER_QUEUE).map(str::to_owned),
        });
    }
    let d = death(props)?;
    let (code, detail) = if d.reason == "delivery_limit" {
        (
            DELIVERY_LIMIT_CODE.to_owned(),
            format!(
                "workers crashed or lost their connection while holding the job more often than the delivery \
                 limit allows ({} times from {}); clean stops do not count",
                d.count.max(1),
                d.queue
            ),
        )
    } else {
        (d.reason.clone(), format!("RabbitMQ dead-lettered the job from {} ({})", d.queue, d.reason))
    };
    Some(DeadLetterReason { code, detail, queue: Some(d.queue) })
}

/// The job a message stands for: the body's `id`, else a UUID `message_id`, else an id derived
/// from the tenant header and the body ([`fleet_core::identity::message_job_id`]), so every
/// delivery of one message, readable or not, names the same job.
pub fn job_id(body: &[u8], props: &BasicProperties) -> uuid::Uuid {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<uuid::Uuid>,
    }
    let body_id = serde_json::from_slice::<IdOnly>(body).ok().and_then(|b| b.id);
    let message_id = props.message_id().as_ref().map(ShortString::as_str);
    fleet_core::identity::message_job_id(body, body_id, message_id, header_str(props, HEADER_TENANT))
}

/// Reads a job message's body, taking the tenant from the header when the body has none.
pub fn decode(body: &[u8], props: &BasicProperties) -> Result<JobSpec, fleet_core::ParseError> {
    let text = std::str::from_utf8(body).map_err(|e| fleet_core::ParseError {
        field: ".".to_owned(),
        message: format!("message body is not UTF-8: {e}"),
        line: 1,
        column: 1,
    })?;
    let mut spec = fleet_core::parse_job(text)?;
    if spec.tenant.is_none() {
        spec.tenant = header_str(props, HEADER_TENANT).map(str::to_owned);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::Limits;

    #[test]
    fn encode_then_decode_is_the_same_job() {
        let job = JobSpec::new("a cat").validate(&Limits::default()).unwrap().assign("acme", uuid::Uuid::now_v7);
        let (body, props) = encode(&job, "trace-1").unwrap();
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(header_str(&props, HEADER_TRACE_ID), Some("trace-1"));
        assert_eq!(header_str(&props, HEADER_PRIORITY), Some("interactive"));
        assert_eq!(&decode(&body, &props).unwrap(), job.spec());
    }

    #[test]
    fn tenant_header_fills_a_body_without_one() {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(HEADER_TENANT), AMQPValue::LongString(LongString::from("py-producer")));
        let props = BasicProperties::default().with_headers(headers);
        let spec = decode(br#"{"v":1,"prompt":"from python"}"#, &props).unwrap();
        assert_eq!(spec.tenant.as_deref(), Some("py-producer"));
    }

    #[test]
    fn garbage_bodies_are_errors() {
        assert!(decode(b"\xff\xfe", &BasicProperties::default()).is_err());
        assert!(decode(b"{\"prompt\": 1}", &BasicProperties::default()).is_err());
    }

    #[test]
    fn death_and_job_id_are_read_from_a_dead_lettered_message() {
        use lapin::types::FieldArray;
        let mut entry = FieldTable::default();
        entry.insert(ShortString::from("reason"), AMQPValue::LongString(LongString::from("delivery_limit")));
        entry.insert(ShortString::from("queue"), AMQPValue::LongString(LongString::from("fleet.tiny.bulk")));
        entry.insert(ShortString::from("count"), AMQPValue::LongLongInt(1));
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-death"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)])),
        );
        let props = BasicProperties::default().with_headers(headers);
        let dead = death(&props).unwrap();
        assert_eq!((dead.reason.as_str(), dead.queue.as_str(), dead.count), ("delivery_limit", "fleet.tiny.bulk", 1));
        assert_eq!(death(&BasicProperties::default()), None);
        let why = dead_letter_reason(&props).unwrap();
        assert_eq!((why.code.as_str(), why.queue.as_deref()), ("crashed", Some("fleet.tiny.bulk")));
        assert!(why.detail.contains("clean stops do not count"), "{}", why.detail);
        assert_eq!(dead_letter_reason(&BasicProperties::default()), None);

        // A worker's own reason wins over the broker's.
        let mut own = props.headers().clone().unwrap_or_default();
        own.insert(
            ShortString::from(HEADER_DEAD_LETTER_REASON),
            AMQPValue::LongString(LongString::from("invalid_spec")),
        );
        own.insert(
            ShortString::from(HEADER_DEAD_LETTER_DETAIL),
            AMQPValue::LongString(LongString::from("steps: must be 1, 2, 4 or 8")),
        );
        let why = dead_letter_reason(&props.clone().with_headers(own)).unwrap();
        assert_eq!(
            (why.code.as_str(), why.detail.as_str(), why.queue),
            ("invalid_spec", "steps: must be 1, 2, 4 or 8", None)
        );

        let id = uuid::Uuid::now_v7();
        assert_eq!(job_id(format!(r#"{{"id":"{id}","prompt":"x"}}"#).as_bytes(), &props), id);
        let with_message_id = props.with_message_id(ShortString::from(id.to_string()));
        assert_eq!(job_id(b"not json", &with_message_id), id);
        let derived = job_id(b"not json", &BasicProperties::default());
        assert_eq!(derived, job_id(b"not json", &BasicProperties::default()), "the same message, the same job");
    }

    #[test]
    fn the_body_id_wins_over_the_message_id_and_the_tenant_header_is_part_of_a_derived_id() {
        let (body_id, message_id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let body = format!(r#"{{"id":"{body_id}","prompt":"x"}}"#);
        let props = BasicProperties::default().with_message_id(ShortString::from(message_id.to_string()));
        assert_eq!(job_id(body.as_bytes(), &props), body_id);
        let tenant = |name: &str| {
            let mut headers = FieldTable::default();
            headers.insert(ShortString::from(HEADER_TENANT), AMQPValue::LongString(LongString::from(name)));
            BasicProperties::default().with_headers(headers)
        };
        let body = br#"{"prompt":"x"}"#;
        assert_eq!(job_id(body, &tenant("acme")), job_id(body, &tenant("acme")));
        assert_ne!(job_id(body, &tenant("acme")), job_id(body, &tenant("globex")));
    }
}
