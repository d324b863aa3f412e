//! The HTTP client: reqwest with the policy's resolver, redirect check, timeouts and no proxy
//! (a proxy would connect to targets the resolver never saw).

use std::error::Error as StdError;
use std::path::Path;
use std::sync::Arc;

use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Response, Url, redirect};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{EgressError, shown};
use crate::policy::{EgressPolicy, Rules};
use crate::resolver::CheckingResolver;

/// An HTTP client that reaches only what its [`EgressPolicy`] allows.
#[derive(Debug, Clone)]
pub struct EgressClient {
    rules: Arc<Rules>,
    http: reqwest::Client,
}

/// An answer to [`EgressClient::post`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressResponse {
    pub status: u16,
    /// The body, cut at the caller's limit.
    pub body: Vec<u8>,
}

/// A body [`EgressClient::download`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub bytes: u64,
    /// SHA-256 of the body, lowercase hex.
    pub sha256: String,
}

impl EgressClient {
    pub fn new(policy: EgressPolicy) -> Result<Self, EgressError> {
        let rules = Arc::new(Rules::new(&policy)?);
        let http = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(CheckingResolver { rules: rules.clone() }))
            .redirect(redirect_policy(rules.clone(), policy.max_redirects))
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.timeout)
            .build()
            .map_err(|e| EgressError::Policy(format!("HTTP client: {e}")))?;
        Ok(EgressClient { rules, http })
    }

    /// The URL parsed and checked without DNS (scheme, host list, IP literal); the addresses a
    /// name resolves to are checked when connecting.
    pub fn check_url(&self, url: &str) -> Result<Url, EgressError> {
        let parsed =
            Url::parse(url).map_err(|e| EgressError::InvalidUrl { url: url.to_owned(), reason: e.to_string() })?;
        self.rules.check_url(&parsed)?;
        Ok(parsed)
    }

    /// POSTs `body`; reads at most `max_response_bytes` of the answer. Any status is an answer
    /// (a 3xx not followed included); only failing to get one is an error.
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Vec<u8>,
        max_response_bytes: usize,
    ) -> Result<EgressResponse, EgressError> {
        let url = self.check_url(url)?;
        let mut response =
            self.http.post(url.clone()).headers(headers).body(body).send().await.map_err(|e| from_reqwest(&url, &e))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        // The receiver's body is informational: a slow or broken one does not undo its status.
        while body.len() < max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(max_response_bytes - body.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(EgressResponse { status, body })
    }

    /// GETs `url` into the file `dest` (created or truncated, synced to disk before returning).
    /// Refuses a body over `max_bytes` (declared or streamed) and any non-2xx answer. The caller
    /// decides what a partial file is worth: on error, `dest` may hold part of the body.
    pub async fn download(&self, url: &str, dest: &Path, max_bytes: u64) -> Result<Download, EgressError> {
        let url = self.check_url(url)?;
        let response = self.http.get(url.clone()).send().await.map_err(|e| from_reqwest(&url, &e))?;
        let response = successful(&url, response)?;
        if response.content_length().is_some_and(|len| len > max_bytes) {
            return Err(EgressError::TooLarge { url: shown(&url), limit: max_bytes });
        }
        write_body(&url, response, dest, max_bytes).await
    }
}

fn redirect_policy(rules: Arc<Rules>, max_redirects: usize) -> redirect::Policy {
    if max_redirects == 0 {
        return redirect::Policy::none();
    }
    redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max_redirects {
            let from = attempt.previous().last().map(shown).unwrap_or_default();
            let to = shown(attempt.url());
            return attempt.error(EgressError::Redirect { url: from, location: to });
        }
        match rules.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    })
}

fn successful(url: &Url, response: Response) -> Result<Response, EgressError> {
    let status = response.status();
    if status.is_redirection() {
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        return Err(EgressError::Redirect { url: shown(url), location });
    }
    if !status.is_success() {
        return Err(EgressError::Status { url: shown(url), status: status.as_u16() });
    }
    Ok(response)
}

async fn write_body(url: &Url, mut response: Response, dest: &Path, max_bytes: u64) -> Result<Download, EgressError> {
    let io = |source| EgressError::Io { path: dest.to_owned(), source };
    let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|e| from_reqwest(url, &e))? {
        bytes += chunk.len() as u64;
        if bytes > max_bytes {
            return Err(EgressError::TooLarge { url: shown(url), limit: max_bytes });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Download { bytes, sha256 })
}

/// reqwest's error as ours: a refusal by the resolver or the redirect check comes back as
/// itself, found in the error's source chain.
fn from_reqwest(url: &Url, error: &reqwest::Error) -> EgressError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(ours) = e.downcast_ref::<EgressError>().and_then(EgressError::replicate) {
            return ours;
        }
        source = e.source();
    }
    if error.is_timeout() {
        EgressError::Timeout { url: shown(url) }
    } else {
        EgressError::Connect { url: shown(url), reason: chain(error) }
    }
}

fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

impl EgressError {
    /// A copy of errors the resolver and redirect check raise (they travel inside reqwest's).
    fn replicate(&self) -> Option<EgressError> {
        Some(match self {
            EgressError::AddressNotAllowed { host, addr } => {
                EgressError::AddressNotAllowed { host: host.clone(), addr: *addr }
            }
            EgressError::Resolve { host, reason } => {
                EgressError::Resolve { host: host.clone(), reason: reason.clone() }
            }
            EgressError::Redirect { url, location } => {
                EgressError::Redirect { url: url.clone(), location: location.clone() }
            }
            EgressError::SchemeNotAllowed { url, scheme } => {
                EgressError::SchemeNotAllowed { url: url.clone(), scheme: scheme.clone() }
            }
            EgressError::HostNotAllowed { url, host } => {
                EgressError::HostNotAllowed { url: url.clone(), host: host.clone() }
            }
            _ => return None,
        })
    }
}
