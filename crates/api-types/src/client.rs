//! A typed async client for one node's HTTP API: one method per endpoint.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agora_api_types::ClientError> {
//! use agora_api_types::{Client, SubmitRequest};
//!
//! let api = Client::new("127.0.0.1:7460", None)?;
//! let module = api.put_blob(std::fs::read("primes.wasm").unwrap_or_default()).await?;
//! let job = api.submit(&SubmitRequest::new(module.hash)).await?;
//! println!("{}", api.job(&job.id).await?.state);
//! # Ok(()) }
//! ```

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    AccountView, AmountRequest, BlobStored, Blocks, BlocksQuery, ErrorBody, History, HistoryQuery,
    JobCancelled, JobCreated, JobSummary, JobView, LedgerStatus, NodeStatus, PeerInfo,
    SubmitRequest, TransferRequest, TxOutcome,
};

/// How long one request may take: longer than the node's 30 s wait for a transaction's block.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long `put_blob` waits in all for a node that answers 503 (busy) before giving up.
const UPLOAD_BUSY_WAIT: Duration = Duration::from_secs(60);

/// Why a request failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address is not a URL or HOST:PORT.
    #[error("{0:?} is not a node API address; give HOST:PORT or http://HOST:PORT (--api)")]
    Address(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
    /// Nothing answered.
    #[error("cannot reach the node at {base}; is `agora node` running? (set --api): {source}")]
    Unreachable {
        /// The API's base URL.
        base: String,
        /// What the connection said.
        source: reqwest::Error,
    },
    /// The node answered with an error status.
    #[error("{base} answered {status}: {message}")]
    Api {
        /// The API's base URL.
        base: String,
        /// The status code.
        status: StatusCode,
        /// The node's `error` text.
        message: String,
    },
    /// The answer was not what this API version sends.
    #[error(
        "{base} sent an answer this client cannot read (is it another Agora version?): {source}"
    )]
    Decode {
        /// The API's base URL.
        base: String,
        /// What did not parse.
        source: reqwest::Error,
    },
    /// The answer's body was not the JSON this API version sends.
    #[error(
        "{base} sent JSON this client cannot read (is it another Agora version? a body over \
         {JSON_BODY_CAP} bytes is cut there): {source}"
    )]
    Json {
        /// The API's base URL.
        base: String,
        /// What did not parse.
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The status code, when the node answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client bound to one node's API, with that node's token when it has one.
#[derive(Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

/// Never prints the token: a `{:?}` in a log must not leak it.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `api` (`HOST:PORT` or a URL). `token` is sent as `Authorization: Bearer` on
    /// every request; the node requires it for every request that changes state or spends.
    pub fn new(api: &str, token: Option<String>) -> Result<Client, ClientError> {
        let text = if api.starts_with("http://") || api.starts_with("https://") {
            api.trim_end_matches('/').to_string()
        } else {
            format!("http://{api}")
        };
        let base = Url::parse(&text).map_err(|_| ClientError::Address(api.to_string()))?;
        if base.cannot_be_a_base() || base.host_str().is_none() {
            return Err(ClientError::Address(api.to_string()));
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(ClientError::Build)?;
        Ok(Client { base, token, http })
    }

    /// The API's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The URL of `segments` under the base (each segment percent-encoded).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let r = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base().to_string(),
                source,
            })?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        // An error answer is read up to ERROR_BODY_CAP: a hostile or broken server cannot make
        // the client hold an endless error page.
        let body = read_capped(r, ERROR_BODY_CAP).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => b.error,
            Err(_) if text.trim().is_empty() => "no details".to_string(),
            Err(_) => text.trim().chars().take(500).collect(),
        };
        Err(ClientError::Api {
            base: self.base().to_string(),
            status,
            message,
        })
    }

    async fn decode<T: DeserializeOwned>(&self, r: Response) -> Result<T, ClientError> {
        let bytes = read_capped(r, JSON_BODY_CAP)
            .await
            .map_err(|source| ClientError::Decode {
                base: self.base().to_string(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Json {
            base: self.base().to_string(),
            source,
        })
    }

    /// `GET` the path `segments` (with `query`) and decode the answer as `T`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &impl Serialize,
    ) -> Result<T, ClientError> {
        let r = self
            .send(self.http.get(self.url(segments)).query(query))
            .await?;
        self.decode(r).await
    }

    /// `POST` `body` as JSON to the path `segments` (with `query`) and decode the answer as `T`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &impl Serialize,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let r = self
            .send(self.http.post(self.url(segments)).query(query).json(body))
            .await?;
        self.decode(r).await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.get(&["v1", "status"], &()).await
    }

    /// `GET /v1/peers`.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ClientError> {
        self.get(&["v1", "peers"], &()).await
    }

    /// `POST /v1/blobs`: stores `bytes` on the node.
    ///
    /// The node takes a few uploads at a time and answers 503 to the rest: that is backpressure,
    /// so this waits and tries again (backoff from 50 ms to 1 s, for at most about a minute)
    /// before it gives up with the node's answer.
    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<BlobStored, ClientError> {
        let body = bytes::Bytes::from(bytes);
        let mut pause = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            let req = self
                .http
                .post(self.url(&["v1", "blobs"]))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body.clone());
            match self.send(req).await {
                Ok(r) => return self.decode(r).await,
                Err(ClientError::Api { status, .. })
                    if status == StatusCode::SERVICE_UNAVAILABLE && waited < UPLOAD_BUSY_WAIT =>
                {
                    tokio::time::sleep(pause).await;
                    waited += pause;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `POST /v1/jobs`.
    pub async fn submit(&self, req: &SubmitRequest) -> Result<JobCreated, ClientError> {
        self.post(&["v1", "jobs"], &(), req).await
    }

    /// `GET /v1/jobs`: this node's jobs, newest first.
    pub async fn jobs(&self) -> Result<Vec<JobSummary>, ClientError> {
        self.get(&["v1", "jobs"], &()).await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<JobView, ClientError> {
        self.get(&["v1", "jobs", id], &()).await
    }

    /// `GET /v1/jobs/{id}/output`: the verified output's bytes.
    pub async fn output(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        let r = self
            .send(self.http.get(self.url(&["v1", "jobs", id, "output"])))
            .await?;
        let bytes = r.bytes().await.map_err(|source| ClientError::Decode {
            base: self.base().to_string(),
            source,
        })?;
        Ok(bytes.to_vec())
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<JobCancelled, ClientError> {
        self.post(&["v1", "jobs", id, "cancel"], &(), &serde_json::json!({}))
            .await
    }

    /// `GET /v1/ledger/status`.
    pub async fn ledger_status(&self) -> Result<LedgerStatus, ClientError> {
        self.get(&["v1", "ledger", "status"], &()).await
    }

    /// `GET /v1/ledger/accounts/{id}` (`id` a peer id).
    pub async fn account(&self, id: &str) -> Result<AccountView, ClientError> {
        self.get(&["v1", "ledger", "accounts", id], &()).await
    }

    /// `GET /v1/jobs/estimate`: what a job would cost now; nothing is locked.
    pub async fn estimate(&self, q: &crate::EstimateQuery) -> Result<crate::Estimate, ClientError> {
        self.get(&["v1", "jobs", "estimate"], q).await
    }

    /// `GET /v1/ledger/blocks`.
    pub async fn blocks(&self, q: &BlocksQuery) -> Result<Blocks, ClientError> {
        self.get(&["v1", "ledger", "blocks"], q).await
    }

    /// `GET /v1/wallet`: this node's account.
    pub async fn wallet(&self) -> Result<AccountView, ClientError> {
        self.get(&["v1", "wallet"], &()).await
    }

    /// `GET /v1/wallet/history`.
    pub async fn history(&self, q: &HistoryQuery) -> Result<History, ClientError> {
        self.get(&["v1", "wallet", "history"], q).await
    }

    /// `POST /v1/wallet/transfer`; with `wait`, answers once the transfer is in a block.
    pub async fn transfer(
        &self,
        req: &TransferRequest,
        wait: bool,
    ) -> Result<TxOutcome, ClientError> {
        self.post(&["v1", "wallet", "transfer"], &[("wait", wait)], req)
            .await
    }

    /// `POST /v1/wallet/stake`.
    pub async fn stake(&self, amount: u64, wait: bool) -> Result<TxOutcome, ClientError> {
        self.post(
            &["v1", "wallet", "stake"],
            &[("wait", wait)],
            &AmountRequest { amount },
        )
        .await
    }

    /// `POST /v1/wallet/unstake`.
    pub async fn unstake(&self, amount: u64, wait: bool) -> Result<TxOutcome, ClientError> {
        self.post(
            &["v1", "wallet", "unstake"],
            &[("wait", wait)],
            &AmountRequest { amount },
        )
        .await
    }

    /// `GET /v1/openapi.json`: the API's OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get(&["v1", "openapi.json"], &()).await
    }
}

/// The most of an error answer's body the client reads (its message is cut to 500 characters).
pub const ERROR_BODY_CAP: usize = 16 * 1024;

/// The most of a JSON answer's body the client reads: far above any answer a node gives (job
/// lists are paged, outputs are not JSON).
pub const JSON_BODY_CAP: usize = 64 * 1024 * 1024;

/// The body of `r`, at most `cap` bytes of it (the rest is not read).
async fn read_capped(mut r: Response, cap: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = r.chunk().await? {
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_urls_and_segments_are_encoded() {
        let c = Client::new("127.0.0.1:7460", None).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:7460");
        assert_eq!(
            c.url(&["v1", "jobs", "a/b?c"]).as_str(),
            "http://127.0.0.1:7460/v1/jobs/a%2Fb%3Fc"
        );
        let c = Client::new("http://[::1]:7460/", Some("t".into())).unwrap();
        assert_eq!(
            c.url(&["v1", "status"]).as_str(),
            "http://[::1]:7460/v1/status"
        );
        assert_eq!(c.token(), Some("t"));
        let secret = Client::new("127.0.0.1:7460", Some("s3cr3t".into())).unwrap();
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        assert!(matches!(
            Client::new("not a host", None),
            Err(ClientError::Address(_))
        ));
    }

    #[tokio::test]
    async fn an_unreachable_node_says_how_to_fix_it() {
        // Port 9 on loopback: nothing listens there in a test environment.
        let c = Client::new("127.0.0.1:9", None).unwrap();
        let e = c.status().await.unwrap_err().to_string();
        assert!(e.contains("is `agora node` running"), "{e}");
    }

    /// A server that answers 500 with an endless body: the client reads ERROR_BODY_CAP of it
    /// and returns the error, instead of reading until the server stops.
    #[tokio::test]
    async fn an_endless_error_body_is_cut() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = sock.read(&mut req).await;
            let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            sock.write_all(head.as_bytes()).await.unwrap();
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
            let mut sent = 0usize;
            // Up to 1 GiB, far past the cap; stops when the client hangs up.
            while sent < (1 << 30) {
                if sock.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                sent += 64 * 1024;
            }
            sent
        });
        let c = Client::new(&addr.to_string(), None).unwrap();
        let e = c.status().await.unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR), "{e}");
        let ClientError::Api { message, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(
            message.chars().count(),
            500,
            "the message is cut to 500 characters"
        );
        drop(c);
        let sent = server.await.unwrap();
        assert!(sent < (1 << 30), "the client read the whole endless body");
    }
}
