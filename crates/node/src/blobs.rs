//! Fetching blobs from peers, in bounded chunks, verified against their hash.
//!
//! A worker needs a job's module and input. It asks the submitter first and then any provider
//! the DHT knows of. Every chunk is bounded ([`limits::BLOB_CHUNK_BYTES`]), the total is bounded by
//! the size the signed spec declares, and the assembled blob is stored only if its blake3 hash
//! matches; so a peer can waste a bounded amount of our time, never our memory or our disk.

use agora_net::{NetHandle, PeerId};
use agora_types::Hash;
use agora_types::wire::{Request, Response, limits};

use crate::store::Store;

/// The DHT key under which providers of a blob are announced.
pub fn provider_key(hash: &Hash) -> Vec<u8> {
    let mut k = b"agora/blob/".to_vec();
    k.extend_from_slice(hash.as_bytes());
    k
}

/// Why a blob could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No peer had it, or every attempt failed; the last reason is kept.
    #[error("cannot fetch blob {hash}: {reason}")]
    Unavailable {
        /// The blob.
        hash: Hash,
        /// The last failure.
        reason: String,
    },
}

async fn fetch_from(
    net: &NetHandle,
    peer: PeerId,
    hash: Hash,
    size: u64,
) -> Result<Vec<u8>, String> {
    let mut buf: Vec<u8> = Vec::with_capacity(size.min(1 << 20) as usize);
    while (buf.len() as u64) < size || size == 0 {
        let want = (size - buf.len() as u64).min(limits::BLOB_CHUNK_BYTES as u64) as u32;
        let r = net
            .request(
                peer,
                Request::GetBlob {
                    hash,
                    offset: buf.len() as u64,
                    len: want,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        match r {
            Response::Blob { total, data } => {
                if total != size {
                    return Err(format!(
                        "peer says the blob has {total} bytes, the spec says {size}"
                    ));
                }
                if data.is_empty() && size > 0 {
                    return Err("peer sent an empty chunk".into());
                }
                if data.len() as u64 > want as u64 {
                    return Err("peer sent more than asked".into());
                }
                buf.extend_from_slice(&data);
                if size == 0 {
                    break;
                }
            }
            Response::NotFound => return Err(format!("{peer} does not have it")),
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
    if Hash::of(&buf) != hash {
        return Err(format!("{peer} sent bytes that do not hash to {hash}"));
    }
    Ok(buf)
}

/// The blob `hash` of `size` bytes: from the local store, else from `first` (the submitter),
/// else from DHT providers. Stored locally once fetched.
pub async fn fetch(
    net: &NetHandle,
    store: &Store,
    first: PeerId,
    hash: Hash,
    size: u64,
) -> Result<Vec<u8>, FetchError> {
    let local = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.get_blob(&hash, size))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
    };
    if let Some(b) = local {
        return Ok(b);
    }
    let mut reason = String::from("no provider");
    let mut candidates = vec![first];
    if let Ok(more) = net.find_providers(provider_key(&hash)).await {
        candidates.extend(more.into_iter().filter(|p| *p != first).take(3));
    }
    for peer in candidates {
        match fetch_from(net, peer, hash, size).await {
            Ok(bytes) => {
                let store = store.clone();
                let copy = bytes.clone();
                let _ = tokio::task::spawn_blocking(move || store.put_blob_as(hash, &copy)).await;
                let _ = net.provide(provider_key(&hash)).await;
                return Ok(bytes);
            }
            Err(e) => reason = e,
        }
    }
    Err(FetchError::Unavailable { hash, reason })
}
