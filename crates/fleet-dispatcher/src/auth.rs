//! API keys: held only as SHA-256 digests, each bound to a tenant; `Authorization: Bearer <key>`.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use fleet_core::ErrorCode;
use fleet_core::config::ApiKeyConfig;
use sha2::{Digest as _, Sha256};

use crate::App;
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub admin: bool,
}

/// The configured keys, by digest; the plain keys are dropped after start.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Caller>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    pub fn new(keys: &[ApiKeyConfig]) -> ApiKeys {
        let by_digest =
            keys.iter().map(|k| (digest(&k.key), Caller { tenant: k.tenant.clone(), admin: k.admin })).collect();
        ApiKeys { by_digest }
    }

    /// The caller a presented key belongs to.
    pub fn lookup(&self, key: &str) -> Option<&Caller> {
        self.by_digest.get(&digest(key))
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Caller, ApiError> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let key = header.and_then(|h| h.strip_prefix("Bearer ")).ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthorized, "missing API key: send `Authorization: Bearer <key>`")
        })?;
        let caller = app
            .keys
            .lookup(key.trim())
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown API key"))?;
        enforce_rate_limit(app, &caller.tenant).await?;
        Ok(caller)
    }
}

/// Counts the request against the tenant's per-second limit (`http.max_requests_per_sec_per_tenant`).
async fn enforce_rate_limit(app: &App, tenant: &str) -> Result<(), ApiError> {
    let per_second = app.config.http.max_requests_per_sec_per_tenant;
    if per_second == 0 {
        return Ok(());
    }
    match app.status.count_request(tenant, per_second).await? {
        fleet_status::RateVerdict::Allowed => Ok(()),
        fleet_status::RateVerdict::Limited { retry_after } => {
            app.metrics.rejected(ErrorCode::RateLimited);
            Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("tenant `{tenant}` is over its limit of {per_second} requests per second"),
            )
            .with_retry_after(retry_after.as_secs().max(1)))
        }
    }
}

impl Caller {
    /// Fleet-wide views need an admin key.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::new(ErrorCode::Forbidden, "this endpoint needs an admin API key"))
        }
    }
}
