//! The OpenAPI 3.1 document of the API, assembled from the route table below and the JSON Schemas
//! that schemars derives from the contract types, served at `/openapi.json` and committed as
//! `docs/openapi.json` (a test fails when the two drift).

use serde_json::{Value, json};

/// One operation: method, path, summary, whether it needs a key, request schema, success status and schema.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    auth: bool,
    request: Option<&'static str>,
    ok: (&'static str, Option<&'static str>),
    params: &'static [(&'static str, &'static str, &'static str)],
}

const OPS: &[Op] = &[
    Op {
        method: "post",
        path: "/v1/jobs",
        summary: "Submit one job (object) or several (array); every job is validated before any is accepted",
        auth: true,
        request: Some("JobSubmission"),
        ok: ("202", Some("JobStatus")),
        params: &[],
    },
    Op {
        method: "get",
        path: "/v1/jobs",
        summary: "The caller's jobs, newest first",
        auth: true,
        request: None,
        ok: ("200", Some("JobPage")),
        params: &[
            ("state", "query", "queued|running|succeeded|failed|cancelled"),
            ("limit", "query", "1-100, default 50"),
            ("cursor", "query", "next_cursor of the previous page"),
        ],
    },
    Op {
        method: "get",
        path: "/v1/jobs/{id}",
        summary: "One job's status",
        auth: true,
        request: None,
        ok: ("200", Some("JobStatus")),
        params: &[("id", "path", "job id")],
    },
    Op {
        method: "delete",
        path: "/v1/jobs/{id}",
        summary: "Cancel: a queued job never runs, a running job stops at its next step",
        auth: true,
        request: None,
        ok: ("202", Some("JobStatus")),
        params: &[("id", "path", "job id")],
    },
    Op {
        method: "get",
        path: "/v1/jobs/{id}/events",
        summary: "Server-sent events (event: state, data: JobEvent) until the job is final",
        auth: true,
        request: None,
        ok: ("200", None),
        params: &[("id", "path", "job id")],
    },
    Op {
        method: "get",
        path: "/v1/jobs/{id}/images/{n}",
        summary: "Image n of a finished job: 307 to a presigned S3 URL, or the bytes when images are in a local directory",
        auth: true,
        request: None,
        ok: ("200", None),
        params: &[("id", "path", "job id"), ("n", "path", "image index, 0-based")],
    },
    Op {
        method: "get",
        path: "/v1/jobs/{id}/images/{n}/url",
        summary: "The presigned URL of image n as JSON (null when images are in a local directory), for browsers",
        auth: true,
        request: None,
        ok: ("200", Some("ImageUrl")),
        params: &[("id", "path", "job id"), ("n", "path", "image index, 0-based")],
    },
    Op {
        method: "get",
        path: "/v1/library",
        summary: "What the caller can ask for: tenant, models with size limits, LoRA and ControlNet names",
        auth: true,
        request: None,
        ok: ("200", Some("Library")),
        params: &[],
    },
    Op {
        method: "get",
        path: "/v1/queues",
        summary: "Queue depths and per-model counters (admin)",
        auth: true,
        request: None,
        ok: ("200", None),
        params: &[],
    },
    Op {
        method: "get",
        path: "/v1/workers",
        summary: "Live workers from their heartbeats (admin)",
        auth: true,
        request: None,
        ok: ("200", None),
        params: &[],
    },
    Op {
        method: "get",
        path: "/v1/dead-letters",
        summary: "The dead-letter queue's first messages (job, tenant, reason, queue, count, time), left in the queue (admin)",
        auth: true,
        request: None,
        ok: ("200", Some("DeadLetterPage")),
        params: &[("limit", "query", "1-100, default 20")],
    },
    Op {
        method: "get",
        path: "/v1/bulk/runs",
        summary: "Bulk runs with their progress, most recently started or resumed first (admin)",
        auth: true,
        request: None,
        ok: ("200", Some("BulkRunPage")),
        params: &[("limit", "query", "1-200, default 50")],
    },
    Op {
        method: "get",
        path: "/v1/bulk/runs/{name}",
        summary: "One bulk run: settings, input, progress, unfinished jobs (admin)",
        auth: true,
        request: None,
        ok: ("200", Some("BulkRun")),
        params: &[("name", "path", "run name")],
    },
    Op {
        method: "get",
        path: "/healthz",
        summary: "The process is up",
        auth: false,
        request: None,
        ok: ("200", None),
        params: &[],
    },
    Op {
        method: "get",
        path: "/readyz",
        summary: "Redis and RabbitMQ answer right now (else 503)",
        auth: false,
        request: None,
        ok: ("200", None),
        params: &[],
    },
    Op {
        method: "get",
        path: "/metrics",
        summary: "Prometheus text",
        auth: false,
        request: None,
        ok: ("200", None),
        params: &[],
    },
    Op {
        method: "get",
        path: "/openapi.json",
        summary: "This document",
        auth: false,
        request: None,
        ok: ("200", None),
        params: &[],
    },
];

/// Every (method, path) the document lists, for tests that check each one is routed.
pub fn operations() -> Vec<(&'static str, &'static str)> {
    OPS.iter().map(|op| (op.method, op.path)).collect()
}

fn schema_of<T: schemars::JsonSchema>() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    // Component schemas live under #/components/schemas; rewrite the $defs references.
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("$schema");
        obj.remove("$id");
    }
    let text = schema.to_string().replace("#/$defs/", "#/components/schemas/");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The whole document.
pub fn document() -> Value {
    let mut schemas = serde_json::Map::new();
    for (name, mut schema) in [
        ("JobSpec", schema_of::<fleet_core::JobSpec>()),
        ("JobStatus", schema_of::<fleet_core::JobStatus>()),
        ("BulkRunPage", schema_of::<crate::bulk_runs::BulkRunPage>()),
        ("BulkRun", schema_of::<crate::bulk_runs::BulkRun>()),
        ("DeadLetterPage", schema_of::<crate::dead_letter_list::DeadLetterPage>()),
    ] {
        if let Some(Value::Object(defs)) = schema.as_object_mut().and_then(|o| o.remove("$defs")) {
            schemas.extend(defs);
        }
        schemas.insert(name.to_owned(), schema);
    }
    schemas.insert(
        "JobSubmission".into(),
        json!({"oneOf": [{"$ref": "#/components/schemas/JobSpec"}, {"type": "array", "items": {"$ref": "#/components/schemas/JobSpec"}}]}),
    );
    schemas.insert(
        "JobPage".into(),
        json!({"type": "object", "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobStatus"}}, "next_cursor": {"type": ["string", "null"]}}}),
    );
    schemas.insert(
        "ImageUrl".into(),
        json!({"type": "object", "required": ["url"], "properties": {"url": {"type": ["string", "null"]}, "expires_in_secs": {"type": ["integer", "null"]}}}),
    );
    let names = json!({"type": "array", "items": {"type": "string"}});
    schemas.insert(
        "Library".into(),
        json!({"type": "object", "required": ["tenant", "admin", "models", "loras", "controlnets"], "properties": {
            "tenant": {"type": "string"},
            "admin": {"type": "boolean"},
            "models": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "max_side": {"type": "integer"}, "max_pixels": {"type": "integer"}}}},
            "loras": names,
            "controlnets": names
        }}),
    );
    let codes: Vec<&str> = fleet_core::ErrorCode::ALL.iter().map(|c| c.name()).collect();
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message", "retryable"], "properties": {
            "code": {"type": "string", "enum": codes},
            "message": {"type": "string"},
            "retryable": {"type": "boolean"},
            "fields": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}
        }}}}),
    );
    let mut paths = serde_json::Map::new();
    for op in OPS {
        let mut responses = serde_json::Map::new();
        let ok_body =
            op.ok.1.map(|s| json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}}));
        responses.insert(op.ok.0.into(), json!({"description": "success", "content": ok_body.unwrap_or(json!({}))}));
        let mut statuses: Vec<u16> = fleet_core::ErrorCode::ALL.iter().map(|c| c.http_status()).collect();
        statuses.sort_unstable();
        statuses.dedup();
        for status in statuses {
            responses.insert(status.to_string(), json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        let mut operation = json!({
            "summary": op.summary,
            "parameters": op.params.iter().map(|(name, place, desc)| json!({"name": name, "in": place, "required": *place == "path", "description": desc, "schema": {"type": "string"}})).collect::<Vec<_>>(),
            "responses": responses,
        });
        if op.auth {
            operation["security"] = json!([{"apiKey": []}]);
        }
        if let Some(req) = op.request {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{req}")}}}});
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "lightning-fleet dispatcher", "version": env!("CARGO_PKG_VERSION"),
                 "description": "SDXL-Lightning generation jobs: submit, follow, cancel. Errors carry a stable code; see the README's error-code table."},
        "components": {"schemas": schemas, "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    })
}

/// The document as committed in `docs/openapi.json`.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}
