//! `/ui`: the web console, a static client of this API. Its files are compiled into the binary so
//! the dispatcher serves it alone, with no other web server and nothing fetched from the internet.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};

use crate::error::ApiError;

/// (file name, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../console/index.html")),
    ("console.css", "text/css; charset=utf-8", include_str!("../../console/console.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../console/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../console/api.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_str!("../../console/dom.js")),
    ("command.js", "text/javascript; charset=utf-8", include_str!("../../console/command.js")),
    ("submit.js", "text/javascript; charset=utf-8", include_str!("../../console/submit.js")),
    ("jobs.js", "text/javascript; charset=utf-8", include_str!("../../console/jobs.js")),
    ("job.js", "text/javascript; charset=utf-8", include_str!("../../console/job.js")),
    ("webhooks.js", "text/javascript; charset=utf-8", include_str!("../../console/webhooks.js")),
    ("fleet.js", "text/javascript; charset=utf-8", include_str!("../../console/fleet.js")),
    ("bulk.js", "text/javascript; charset=utf-8", include_str!("../../console/bulk.js")),
];

/// Scripts and styles only from here; images also from the presigned S3 URLs (another origin) and
/// blob URLs (images from a local store) and the empty data: favicon; API calls only to this origin.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data: http: https:; connect-src 'self'; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::not_found(format!("console file `{name}`")).into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            // the files change with the binary, under the same names: revalidate every load
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        *body,
    )
        .into_response()
}

/// `GET /ui`: relative asset paths need the trailing slash.
pub async fn root() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`.
pub async fn index() -> Response {
    asset("index.html")
}

/// `GET /ui/{file}`.
pub async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}
