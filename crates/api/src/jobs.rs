//! Job endpoints: upload blobs, submit, list, inspect, fetch output.
//!
//! - `POST /v1/blobs` (raw body) -> `{"hash": "...", "size": N}`
//! - `POST /v1/jobs` (JSON [`SubmitRequest`]) -> `201 {"id": "..."}`
//! - `GET /v1/jobs` -> summaries, newest first
//! - `GET /v1/jobs/{id}` -> the whole record, with `reason` (why it waits or failed)
//! - `GET /v1/jobs/{id}/output` -> the verified output bytes
//! - `POST /v1/jobs/{id}/cancel`

use agora_api_types::{
    BlobStored, ErrorBody, JobCancelled, JobCreated, JobSummary, JobView, SubmitRequest,
};
use agora_node::{NodeHandle, OutputError, SubmitError};
use agora_types::Hash;
use agora_types::job::{Compare, Runtime};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::{ApiError, convert};

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

fn parse_hash(field: &str, hash: &str) -> Result<Hash, ApiError> {
    hash.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "invalid job spec: `{field}` = {hash:?} is not a blob hash ({e}); upload the blob \
             with POST /v1/blobs and use the `hash` it answers"
        ))
    })
}

/// The node's request from the API's: hashes parsed, every omitted field left to the node's
/// defaults ([`agora_api_types::defaults`]).
fn node_request(req: SubmitRequest) -> Result<agora_node::SubmitRequest, ApiError> {
    Ok(agora_node::SubmitRequest {
        module: parse_hash("module", &req.module)?,
        input: req
            .input
            .as_deref()
            .map(|i| parse_hash("input", i))
            .transpose()?,
        args: req.args,
        redundancy: req.redundancy,
        max_price: req.max_price,
        fuel: req.fuel,
        memory_bytes: req.memory_bytes,
        wall_time_ms: req.wall_time_ms,
        capabilities: req.capabilities,
        deadline_secs: req.deadline_secs,
        runtime: runtime(req.runtime.as_deref(), req.verify.as_deref())?,
    })
}

/// The runtime of a request: `wasm` (the default) or `onnx`, whose comparison rule `verify`
/// names (default `argmax`, see [`Compare::default`]).
fn runtime(name: Option<&str>, verify: Option<&str>) -> Result<Runtime, ApiError> {
    match name.unwrap_or("wasm") {
        "wasm" => match verify {
            None | Some("exact") => Ok(Runtime::Wasm),
            Some(v) => Err(ApiError::bad_request(format!(
                "invalid job spec: `verify` = {v:?} applies to ONNX jobs only; a WebAssembly \
                 job is deterministic and compared bit for bit (omit `verify`, or set \
                 `\"runtime\": \"onnx\"`)"
            ))),
        },
        "onnx" => {
            let compare = match verify {
                None => Compare::default(),
                Some(v) => v.parse::<Compare>().map_err(|e| {
                    ApiError::bad_request(format!("invalid job spec: `verify`: {e}"))
                })?,
            };
            Ok(Runtime::Onnx { compare })
        }
        other => Err(ApiError::bad_request(format!(
            "invalid job spec: `runtime` = {other:?}; it is `wasm` (a WASI command) or `onnx` \
             (an ONNX model whose input is a .npy tensor)"
        ))),
    }
}

/// Stores a blob (a module or an input) and answers its hash.
#[utoipa::path(
    post,
    path = "/v1/blobs",
    operation_id = "put_blob",
    tag = "jobs",
    request_body(content = [u8], content_type = "application/octet-stream",
        description = "The blob's bytes (at most 64 MiB)"),
    responses(
        (status = 201, description = "Stored", body = BlobStored),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 500, description = "The node could not store it", body = ErrorBody),
        (status = 503, description = "Busy: too many uploads at once; retry", body = ErrorBody),
    )
)]
async fn put_blob(
    State(node): State<NodeHandle>,
    axum::Extension(uploads): axum::Extension<crate::uploads::Uploads>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<impl IntoResponse, ApiError> {
    // Bounded and streamed to disk (crate::uploads), never held whole in memory.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let (hash, size) = crate::uploads::receive(&node, &uploads, declared, body).await?;
    Ok((
        StatusCode::CREATED,
        Json(BlobStored {
            hash: hash.to_hex(),
            size,
        }),
    ))
}

/// Submits a job whose module (and input) were uploaded before.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "submit_job",
    tag = "jobs",
    request_body = SubmitRequest,
    responses(
        (status = 201, description = "Submitted", body = JobCreated),
        (status = 400, description = "The spec is invalid", body = ErrorBody),
        (status = 404, description = "The module or input is not on this node", body = ErrorBody),
        (status = 402, description = "The balance does not cover the escrow", body = ErrorBody),
        (status = 500, description = "The node failed", body = ErrorBody),
    )
)]

async fn submit(
    State(node): State<NodeHandle>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: SubmitRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid job spec: {e}")))?;
    match node.submit(node_request(req)?).await {
        Ok(id) => Ok((StatusCode::CREATED, Json(JobCreated { id: id.to_hex() }))),
        Err(e @ (SubmitError::ModuleMissing(_) | SubmitError::InputMissing(_))) => {
            Err(ApiError::not_found(e))
        }
        Err(
            e
            @ (SubmitError::InvalidModule(_) | SubmitError::InvalidOnnx(_) | SubmitError::Spec(_)),
        ) => Err(ApiError::bad_request(e)),
        Err(e @ SubmitError::InsufficientFunds { .. }) => {
            Err(ApiError(StatusCode::PAYMENT_REQUIRED, e.to_string()))
        }
        Err(e @ SubmitError::DiskFull(_)) => {
            Err(ApiError(StatusCode::INSUFFICIENT_STORAGE, e.to_string()))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// The jobs this node submitted and still tracks, newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    responses((status = 200, description = "Newest first", body = Vec<JobSummary>))
)]
async fn list(State(node): State<NodeHandle>) -> Json<Vec<JobSummary>> {
    Json(node.jobs().await.iter().map(convert::summary).collect())
}

/// One job: its state, why it waits or failed, its bids, leases, results and timeline.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "show_job",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id (64 hex characters)")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 404, description = "No such job on this node", body = ErrorBody),
    )
)]
async fn show(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let r = node
        .job(id)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no job {id} on this node")))?;
    Ok(Json(convert::job(&r)))
}

/// A verified job's output (its program's stdout).
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/output",
    operation_id = "job_output",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The output's bytes", body = [u8],
            content_type = "application/octet-stream"),
        (status = 404, description = "No such job on this node", body = ErrorBody),
        (status = 409, description = "The job has no verified output (yet)", body = ErrorBody),
    )
)]
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

/// Cancels a job.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Cancelled", body = JobCancelled),
        (status = 404, description = "No such job on this node", body = ErrorBody),
    )
)]
async fn cancel(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    if node.cancel(id).await {
        Ok(Json(JobCancelled {
            cancelled: id.to_hex(),
        }))
    } else {
        Err(ApiError::not_found(format!("no job {id} on this node")))
    }
}
