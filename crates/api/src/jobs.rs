//! Job endpoints: upload blobs, submit, list, inspect, fetch output.
//!
//! - `POST /v1/blobs` (raw body) -> `{"hash": "...", "size": N}`
//! - `POST /v1/jobs` (JSON [`SubmitRequest`]) -> `201 {"id": "..."}`
//! - `GET /v1/jobs` -> summaries, newest first
//! - `GET /v1/jobs/{id}` -> the whole record, with `reason` (why it waits or failed)
//! - `GET /v1/jobs/{id}/output` -> the verified output bytes
//! - `POST /v1/jobs/{id}/cancel`

use agora_node::{JobRecord, NodeHandle, OutputError, SubmitError, SubmitRequest};
use agora_types::Hash;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::ApiError;

pub(crate) fn routes() -> Router<NodeHandle> {
    Router::new()
        .route("/v1/blobs", post(put_blob))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/output", get(output))
        .route("/v1/jobs/{id}/cancel", post(cancel))
}

fn parse_id(id: &str) -> Result<Hash, ApiError> {
    id.parse().map_err(ApiError::bad_request)
}

/// Why a job is where it is, in one sentence (or null).
pub fn reason(r: &JobRecord) -> Option<String> {
    match (&r.fail_reason, &r.waiting) {
        (Some(f), _) => Some(f.to_string()),
        (None, Some(w)) if !r.state.is_final() => Some(w.to_string()),
        _ => None,
    }
}

fn summary(r: &JobRecord) -> Value {
    let latency_ms = r.finished_ms.map(|f| f.saturating_sub(r.created_ms));
    let output_hash = match &r.outcome {
        Some(agora_types::job::Outcome::Completed { output_hash, .. }) => {
            Some(output_hash.to_hex())
        }
        _ => None,
    };
    json!({
        "id": r.id,
        "state": r.state.to_string(),
        "reason": reason(r),
        "redundancy": r.redundancy(),
        "bids": r.bids.len(),
        "results": r.results.len(),
        "workers": r.quorum,
        "output_hash": output_hash,
        "created_ms": r.created_ms,
        "finished_ms": r.finished_ms,
        "latency_ms": latency_ms,
    })
}

async fn put_blob(
    State(node): State<NodeHandle>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let size = body.len();
    let hash = node
        .put_blob(body.to_vec())
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"hash": hash, "size": size})),
    ))
}

async fn submit(
    State(node): State<NodeHandle>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: SubmitRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid job spec: {e}")))?;
    match node.submit(req).await {
        Ok(id) => Ok((StatusCode::CREATED, Json(json!({"id": id})))),
        Err(e @ (SubmitError::ModuleMissing(_) | SubmitError::InputMissing(_))) => {
            Err(ApiError::not_found(e))
        }
        Err(e @ (SubmitError::InvalidModule(_) | SubmitError::Spec(_))) => {
            Err(ApiError::bad_request(e))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn list(State(node): State<NodeHandle>) -> impl IntoResponse {
    let jobs: Vec<Value> = node.jobs().await.iter().map(summary).collect();
    Json(jobs)
}

async fn show(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let r = node
        .job(id)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no job {id} on this node")))?;
    let mut v = serde_json::to_value(&r).map_err(ApiError::internal)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("reason".into(), json!(reason(&r)));
        o.insert("summary".into(), summary(&r));
    }
    Ok(Json(v))
}

async fn output(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    match node.output(id).await {
        Ok(bytes) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes)),
        Err(e @ OutputError::UnknownJob(_)) => Err(ApiError::not_found(e)),
        Err(e @ OutputError::NotReady { .. }) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn cancel(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    if node.cancel(id).await {
        Ok(Json(json!({"cancelled": id})))
    } else {
        Err(ApiError::not_found(format!("no job {id} on this node")))
    }
}
