//! Blob uploads (`POST /v1/blobs`): bounded in number and streamed to disk.
//!
//! At most [`MAX_UPLOADS`] uploads are received at once; one more is answered 503 "busy: retry"
//! at once, so parallel uploads cannot pile up. Each upload is written to a temporary file in the
//! blob directory as it arrives (never held in memory whole), capped at
//! [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES), then hashed from disk and renamed into place by the
//! store. A failed or abandoned upload leaves no file behind (removed on drop).

use std::path::PathBuf;
use std::sync::Arc;

use agora_node::NodeHandle;
use agora_node::store::StoreError;
use agora_types::Hash;
use axum::body::Body;
use axum::http::StatusCode;
use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;

use crate::{ApiError, MAX_BODY_BYTES};

/// The most uploads received at once.
pub const MAX_UPLOADS: usize = 4;

/// The permits for uploads in progress (one per upload), shared by the router's handlers.
#[derive(Clone, Debug)]
pub struct Uploads(Arc<Semaphore>);

impl Uploads {
    /// Room for `n` uploads at once.
    pub fn new(n: usize) -> Uploads {
        Uploads(Arc::new(Semaphore::new(n.max(1))))
    }
}

/// A temporary file removed on drop unless it was handed to the store.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn too_large() -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a blob may have at most {MAX_BODY_BYTES} bytes"),
    )
}

fn store_error(e: StoreError) -> ApiError {
    match &e {
        StoreError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => ApiError(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the node's disk is full: {e}; free space in its data directory"),
        ),
        _ if e.is_disk_full() => ApiError(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        _ => ApiError::internal(e),
    }
}

fn io_error(e: std::io::Error) -> ApiError {
    store_error(StoreError::Io(e))
}

/// Receives `body` as a blob: bounded, streamed to disk, stored. Returns its hash and size.
/// `declared` is the request's Content-Length, if any (refused at once when too large).
pub(crate) async fn receive(
    node: &NodeHandle,
    uploads: &Uploads,
    declared: Option<u64>,
    body: Body,
) -> Result<(Hash, u64), ApiError> {
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let Ok(_permit) = uploads.0.clone().try_acquire_owned() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("busy: {MAX_UPLOADS} uploads are in progress on this node; retry in a moment"),
        ));
    };
    let path = node.store().blob_temp_path();
    let mut tmp = TempFile(Some(path.clone()));
    let mut file = tokio::fs::File::create(&path).await.map_err(io_error)?;
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the upload was cut off or malformed: {e}"))
        })?;
        size += chunk.len() as u64;
        if size > MAX_BODY_BYTES as u64 {
            return Err(too_large());
        }
        file.write_all(&chunk).await.map_err(io_error)?;
    }
    file.sync_all().await.map_err(io_error)?;
    drop(file);
    tmp.0 = None; // the store takes the file over (and removes it whatever happens)
    node.put_blob_file(path).await.map_err(store_error)
}
