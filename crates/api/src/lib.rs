//! Agora's HTTP API (axum).
//!
//! Read endpoints for people and scripts (`/v1/status`, `/v1/peers`, `/metrics`) and, with the
//! market, the job endpoints. Every error is JSON `{"error": "..."}` with a status code that says
//! whose fault it was. Request bodies are capped by a body-size limit.
//!
//! Every request and answer is a type of [`agora_api_types`], which the CLI and its typed client
//! share; `convert.rs` is the one place that maps the node's types to them. The OpenAPI 3.1
//! document generated from those types and the handlers' annotations is served at
//! `GET /v1/openapi.json` ([`openapi`]).
//!
//! Nobody but the node's user may change state or spend: at start [`serve`] writes a fresh API
//! token (0600) and every request passes [`auth::guard`]: a `Host` that is not loopback or the
//! bound address is refused (403, DNS rebinding), a request other than GET/HEAD without the
//! token is refused (401), a JSON POST without `Content-Type: application/json` is refused (415,
//! cross-site forms); no CORS header is ever sent. Blob uploads are bounded in number and
//! streamed to disk ([`uploads`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::net::SocketAddr;

use agora_node::NodeHandle;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

pub mod auth;
mod convert;
mod dashboard;
mod estimate;
mod jobs;
mod json_errors;
mod ledger;
pub mod node_metrics;
pub mod openapi;
pub mod uploads;

/// An API error: a status code and a message that says what was wrong.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub(crate) fn bad_request(msg: impl ToString) -> Self {
        ApiError(StatusCode::BAD_REQUEST, msg.to_string())
    }
    pub(crate) fn not_found(msg: impl ToString) -> Self {
        ApiError(StatusCode::NOT_FOUND, msg.to_string())
    }
    pub(crate) fn internal(msg: impl ToString) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(agora_api_types::ErrorBody { error: self.1 })).into_response()
    }
}

/// The largest request body (a module or an input upload).
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// The router over a node. `guard` holds the API token and the bound address: every request
/// passes [`auth::guard`] (Host, token, content type) and finds the [`auth::ApiToken`] in its
/// extensions.
pub fn router(node: NodeHandle, guard: auth::Guard) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .merge(jobs::routes())
        .merge(ledger::routes())
        .merge(dashboard::routes())
        .merge(estimate::routes())
        // The layers come last: each wraps every route above it; the last one is outermost.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::Extension(uploads::Uploads::new(uploads::MAX_UPLOADS)))
        .layer(axum::middleware::from_fn_with_state(guard, auth::guard))
        .layer(axum::middleware::from_fn(json_errors::json_errors))
        .with_state(node)
}

/// The one line that says an API bound beyond loopback is reachable from the network.
fn warn_if_exposed(bound: SocketAddr) {
    if !bound.ip().is_loopback() {
        tracing::warn!(
            %bound,
            "the HTTP API is reachable from the network on {bound}: put TLS (a reverse proxy) \
             in front of it; every state-changing call needs the API token \
             (<data_dir>/api.token); bind --api 127.0.0.1:PORT to keep it on this machine"
        );
    }
}

/// Binds `addr`, writes the API token files ([`auth::TokenFiles`]) and serves the API until
/// `shutdown` resolves; then removes the per-address token file.
pub async fn serve(
    node: NodeHandle,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the HTTP API on {addr}: {e}; choose another with --api HOST:PORT"),
        )
    })?;
    let bound = listener.local_addr()?;
    let token = auth::ApiToken::generate();
    let files = auth::TokenFiles::write(
        &token,
        &node.config().data_dir,
        &agora_node::config::default_data_dir(),
        bound,
    )
    .map_err(std::io::Error::other)?;
    warn_if_exposed(bound);
    tracing::info!(addr = %bound, token_file = %files.data_file.display(), "HTTP API listening");
    let shutdown = async move {
        shutdown.await;
        // Clients must not find a token for an address nobody serves any more.
        files.remove();
    };
    axum::serve(
        listener,
        router(
            node,
            auth::Guard {
                token,
                bound,
                refusals: auth::Refusals::new(),
            },
        ),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The node's identity, addresses and connectivity.
#[utoipa::path(
    get,
    path = "/v1/status",
    operation_id = "status",
    tag = "node",
    responses(
        (status = 200, description = "The node", body = agora_api_types::NodeStatus),
        (status = 500, description = "The node is stopping", body = agora_api_types::ErrorBody),
    )
)]
async fn status(
    State(node): State<NodeHandle>,
) -> Result<Json<agora_api_types::NodeStatus>, ApiError> {
    let s = node.status().await.map_err(ApiError::internal)?;
    Ok(Json(convert::status(s)))
}

/// The peers with an open connection.
#[utoipa::path(
    get,
    path = "/v1/peers",
    operation_id = "peers",
    tag = "node",
    responses(
        (status = 200, description = "Connected peers", body = Vec<agora_api_types::PeerInfo>),
        (status = 500, description = "The node is stopping", body = agora_api_types::ErrorBody),
    )
)]
async fn peers(
    State(node): State<NodeHandle>,
) -> Result<Json<Vec<agora_api_types::PeerInfo>>, ApiError> {
    let p = node.peers().await.map_err(ApiError::internal)?;
    Ok(Json(p.into_iter().map(convert::peer).collect()))
}

/// Every metric, in the OpenMetrics text format (for Prometheus).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text"))
)]
async fn metrics(
    State(node): State<NodeHandle>,
    axum::Extension(refusals): axum::Extension<auth::Refusals>,
) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node_metrics::scrape(&node, &refusals).await,
    )
}
