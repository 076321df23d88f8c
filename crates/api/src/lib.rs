//! Agora's HTTP API (axum).
//!
//! Read endpoints for people and scripts (`/v1/status`, `/v1/peers`, `/metrics`) and, with the
//! market, the job endpoints. Every error is JSON `{"error": "..."}` with a status code that says
//! whose fault it was. Request bodies are capped by a body-size limit.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::net::SocketAddr;

use agora_node::NodeHandle;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

mod jobs;
mod ledger;

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
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (self.0, Json(Body { error: self.1 })).into_response()
    }
}

/// The largest request body (a module or an input upload).
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// The router over a node.
pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/metrics", get(metrics))
        .merge(jobs::routes())
        .merge(ledger::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node)
}

/// Binds `addr` and serves the API until `shutdown` resolves.
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
    tracing::info!(%addr, "HTTP API listening");
    axum::serve(listener, router(node))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn status(State(node): State<NodeHandle>) -> Result<impl IntoResponse, ApiError> {
    let s = node.status().await.map_err(ApiError::internal)?;
    Ok(Json(s))
}

async fn peers(State(node): State<NodeHandle>) -> Result<impl IntoResponse, ApiError> {
    let p = node.peers().await.map_err(ApiError::internal)?;
    Ok(Json(p))
}

async fn metrics(State(node): State<NodeHandle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics_text(),
    )
}
