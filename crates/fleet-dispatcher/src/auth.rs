//! API keys: held only as SHA-256 digests, each bound to a tenant, compared in constant time;
//! `Authorization: Bearer <key>`, checked by a layer in front of every `/v1` route.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use fleet_core::ErrorCode;
use fleet_core::config::ApiKeyConfig;
use sha2::{Digest as _, Sha256};
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use crate::App;
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub admin: bool,
}

/// The configured keys, as digests; the plain keys are dropped after start.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<([u8; 32], Caller)>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    pub fn new(keys: &[ApiKeyConfig]) -> ApiKeys {
        let keys = keys.iter().map(|k| (digest(&k.key), Caller { tenant: k.tenant.clone(), admin: k.admin })).collect();
        ApiKeys { keys }
    }

    /// The caller a presented key belongs to.
    ///
    /// Constant time in the presented key: its digest is compared with every configured digest,
    /// byte for byte without early exit (`subtle`), and the match is selected without a branch,
    /// so the response time says nothing about how close a guess was.
    pub fn lookup(&self, key: &str) -> Option<&Caller> {
        let presented = digest(key);
        let mut found = u64::MAX;
        for (i, (known, _)) in self.keys.iter().enumerate() {
            found.conditional_assign(&(i as u64), known[..].ct_eq(&presented[..]));
        }
        usize::try_from(found).ok().and_then(|i| self.keys.get(i)).map(|(_, caller)| caller)
    }

    /// The caller of a request's `Authorization: Bearer <key>` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let key = header.and_then(|h| h.strip_prefix("Bearer ")).ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthorized, "missing API key: send `Authorization: Bearer <key>`")
        })?;
        self.lookup(key.trim()).cloned().ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown API key"))
    }
}

/// The layer in front of every `/v1` route: no handler runs without a valid key, so a route added
/// behind it cannot forget to check one. The caller is left in the request for [`Caller`].
pub async fn require_key(State(app): State<App>, mut request: Request, next: Next) -> Result<Response, ApiError> {
    let caller = app.keys.authenticate(request.headers())?;
    enforce_rate_limit(&app, &caller.tenant).await?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    /// The caller [`require_key`] authenticated; a handler mounted outside that layer gets 401.
    async fn from_request_parts(parts: &mut Parts, _app: &App) -> Result<Caller, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthorized, "missing API key: send `Authorization: Bearer <key>`")
        })
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
