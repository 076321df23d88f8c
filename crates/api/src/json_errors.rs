//! Every error answer is JSON `{"error": "..."}`, including the ones axum makes itself: an
//! unknown route (404), a wrong method (405), a body that does not parse (400/422), a body over
//! the limit (413). Answers that are already JSON, HTML (the dashboard's) or event streams pass
//! unchanged.

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// The most bytes of a plain-text error read to wrap it.
const MAX_TEXT: usize = 16 << 10;

/// The middleware (outermost in the router).
pub async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let r = next.run(req).await;
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let plain = match r.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/plain")
        }),
    };
    if !plain {
        return r;
    }
    let (parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, MAX_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let msg = match (status.as_u16(), text.is_empty()) {
        (404, true) => format!("no endpoint {method} {path}; see GET /v1/openapi.json"),
        (405, true) => format!("{path} does not take {method}; see GET /v1/openapi.json"),
        (_, true) => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
        (_, false) => text,
    };
    let mut out = ApiError(status, msg).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    out
}
