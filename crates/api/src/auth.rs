//! Who may use the API: the node's API token, the `Host` check, the JSON content type.
//!
//! # The API for handlers (the dashboard uses it)
//!
//! - Every request carries the node's [`ApiToken`] in its extensions:
//!   `Extension(token): Extension<auth::ApiToken>` in a handler's arguments.
//! - [`ApiToken::matches`]`(candidate)` says whether `candidate` is the token, comparing in time
//!   that does not depend on where they differ. [`ApiToken::as_str`] gives the token itself.
//! - [`token_file_name`]`(addr)` is the per-address file name (`127.0.0.1_7460.token`) and
//!   [`address_token_path`]`(addr)` its whole path, for clients that look for the token.
//!
//! # What the guard does (see `/work/notes/token.md`, the contract)
//!
//! At start [`serve`](crate::serve) makes a fresh token (32 random bytes, 64 hex chars) and
//! writes it to `<data_dir>/api.token` and `<default_data_dir>/api/<ip>_<port>.token` (files
//! 0600, the `api` directory 0700), like bitcoind's cookie file. Then every request passes
//! [`guard`], in this order:
//!
//! 1. **Host** (403): the `Host` header must name a loopback address (`127.0.0.1`, `[::1]`,
//!    `localhost`, any port) or the bound address; when bound to `0.0.0.0`/`[::]`, any IP literal.
//!    A DNS-rebinding page sends its own domain name as `Host`, so it is refused even though the
//!    browser connects to 127.0.0.1.
//! 2. **Token** (401): every request other than GET and HEAD needs `Authorization: Bearer <token>`.
//!    A cross-site page cannot know the token, so it cannot spend, stake, submit or upload.
//! 3. **Content type** (415): a POST with a body, other than `POST /v1/blobs` (raw bytes), must
//!    say `Content-Type: application/json`. A "simple" cross-site request (text/plain) never
//!    reaches a JSON handler.
//!
//! No CORS header is ever sent, so browsers keep other origins from reading any answer.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::ApiError;

/// The node's API token: 64 lowercase hex characters, fresh at every start.
#[derive(Clone)]
pub struct ApiToken(Arc<str>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// A fresh token from the OS's random source: 32 bytes as 64 hex characters.
    pub fn generate() -> ApiToken {
        let bytes: [u8; 32] = rand::random();
        ApiToken(hex::encode(bytes).into())
    }

    /// A given token (tests, or a token read back from a file).
    pub fn new(token: impl Into<String>) -> ApiToken {
        ApiToken(token.into().into())
    }

    /// The token itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token. The time taken does not depend on where they differ;
    /// an empty token matches nothing.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.is_empty() || a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Why the token could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A token file or its directory could not be written.
    #[error(
        "cannot write the API token to {path}: {source}; check that the directory is writable \
         by this user (or choose another with --data-dir)"
    )]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The per-address token file's name: `127.0.0.1_7460.token`; `__1_7460.token` for `[::1]:7460`.
pub fn token_file_name(addr: SocketAddr) -> String {
    format!(
        "{}_{}.token",
        addr.ip().to_string().replace(':', "_"),
        addr.port()
    )
}

/// Where the node serving on `addr` writes its token for clients on this machine:
/// `<default_data_dir>/api/<ip>_<port>.token`.
pub fn address_token_path(addr: SocketAddr) -> PathBuf {
    agora_node::config::default_data_dir()
        .join("api")
        .join(token_file_name(addr))
}

/// Writes `token` to `path` with mode 0600: into a temporary file beside it, then renamed.
fn write_secret(path: &Path, token: &ApiToken) -> Result<(), AuthError> {
    use std::io::Write as _;
    let err = |source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "api.token".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", rand::random::<u32>()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(token.as_str().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

/// Creates `dir` (and its parents) and makes it 0700.
fn private_dir(dir: &Path) -> Result<(), AuthError> {
    let err = |source| AuthError::Write {
        path: dir.to_path_buf(),
        source,
    };
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        b.mode(0o700);
        b.create(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    #[cfg(not(unix))]
    b.create(dir).map_err(err)?;
    Ok(())
}

/// The token files one start of the API wrote; [`TokenFiles::remove`] on clean shutdown.
#[derive(Debug)]
pub struct TokenFiles {
    /// `<data_dir>/api.token`.
    pub data_file: PathBuf,
    /// `<default_data_dir>/api/<ip>_<port>.token`, when it could be written.
    pub address_file: Option<PathBuf>,
    token: ApiToken,
}

impl TokenFiles {
    /// Writes `token` for the API bound on `bound`. The file in `data_dir` must be written; the
    /// per-address file under `default_dir` is best effort (a warning says why it is missing).
    pub fn write(
        token: &ApiToken,
        data_dir: &Path,
        default_dir: &Path,
        bound: SocketAddr,
    ) -> Result<TokenFiles, AuthError> {
        // The data dir's own permissions are the operator's choice; the file is 0600 either way.
        std::fs::create_dir_all(data_dir).map_err(|source| AuthError::Write {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let data_file = data_dir.join("api.token");
        write_secret(&data_file, token)?;
        let dir = default_dir.join("api");
        let path = dir.join(token_file_name(bound));
        let address_file = match private_dir(&dir).and_then(|()| write_secret(&path, token)) {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(error = %e, "clients on this machine must be given the token (--token or AGORA_DATA_DIR)");
                None
            }
        };
        Ok(TokenFiles {
            data_file,
            address_file,
            token: token.clone(),
        })
    }

    /// Removes the per-address file, if it still holds this start's token (a newer node on the
    /// same address may have replaced it). The file in the data dir stays, as bitcoind's does.
    pub fn remove(&self) {
        let Some(path) = &self.address_file else {
            return;
        };
        if let Ok(text) = std::fs::read_to_string(path)
            && self.token.matches(text.trim())
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Requests [`guard`] refused, by `reason` (`host`, `token_missing`, `token_wrong`,
/// `content_type`): `agora_api_refused_requests_total` on `/metrics`. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Refusals(Family<Vec<(String, String)>, Counter>);

impl Refusals {
    /// Every reason, so that each series exists (at 0) from the start.
    pub const REASONS: [&'static str; 4] = ["host", "token_missing", "token_wrong", "content_type"];

    /// The counters, every reason at 0.
    pub fn new() -> Refusals {
        let f: Family<Vec<(String, String)>, Counter> = Family::default();
        for r in Self::REASONS {
            let _ = f.get_or_create(&vec![("reason".to_string(), r.to_string())]);
        }
        Refusals(f)
    }

    fn count(&self, reason: &str) {
        self.0
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// The family, for a registry (`/metrics`).
    pub fn family(&self) -> Family<Vec<(String, String)>, Counter> {
        self.0.clone()
    }
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals::new()
    }
}

/// What [`guard`] checks against: the token and the address the API is bound to; it counts
/// what it refuses.
#[derive(Clone, Debug)]
pub struct Guard {
    /// The node's token.
    pub token: ApiToken,
    /// The API's bound address.
    pub bound: SocketAddr,
    /// What was refused, by reason.
    pub refusals: Refusals,
}

/// Splits a `Host` value into its host and optional port; `None` if malformed.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        match after {
            "" => (ip, None),
            p => (ip, Some(p.strip_prefix(':')?)),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    (!name.is_empty()).then_some((name, port))
}

/// Whether `host` (a `Host` header) may reach the API bound on `bound` (see the module docs).
pub fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    let Some((name, port)) = split_host(host.trim()) else {
        return false;
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Ok(ip) = name.parse::<IpAddr>() else {
        return false;
    };
    if ip.is_loopback() {
        return true;
    }
    let port_ok = port.is_none_or(|p| p == bound.port());
    (ip == bound.ip() || bound.ip().is_unspecified()) && port_ok
}

/// The bearer token of a request, if it has one.
fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether the request has a body (a non-zero length or a chunked one).
fn has_body(req: &Request) -> bool {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Paths whose POST body is raw bytes, not JSON.
const RAW_BODY_PATHS: &[&str] = &["/v1/blobs"];

fn unauthorized(msg: String) -> Response {
    let mut r = ApiError(StatusCode::UNAUTHORIZED, msg).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The middleware: Host, then token, then content type (see the module docs). Puts the token
/// (and the [`Refusals`], for `/metrics`) into the request's extensions for the handlers.
pub async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match host {
        Some(h) if host_allowed(&h, g.bound) => {}
        Some(h) => {
            g.refusals.count("host");
            return ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "Host {h:?} is not this node's API (bound on {}); use http://127.0.0.1:{} \
                     or http://localhost:{} on the node's machine, or the bound address",
                    g.bound,
                    g.bound.port(),
                    g.bound.port()
                ),
            )
            .into_response();
        }
        None => {
            g.refusals.count("host");
            return ApiError(
                StatusCode::FORBIDDEN,
                "the request has no Host header; send one (every HTTP/1.1 client does)".into(),
            )
            .into_response();
        }
    }
    let m = req.method();
    if m != Method::GET && m != Method::HEAD {
        match bearer(&req) {
            None => {
                g.refusals.count("token_missing");
                return unauthorized(format!(
                    "this request needs the node's API token: run the CLI on the node's machine \
                     (it finds the token itself), or pass --token / AGORA_API_TOKEN, or send \
                     `Authorization: Bearer <token>`; the node writes it to <data_dir>/api.token \
                     and {}",
                    address_token_path(g.bound).display()
                ));
            }
            Some(t) if !g.token.matches(t) => {
                g.refusals.count("token_wrong");
                return unauthorized(
                    "the API token does not match this node's; the token changes at every start \
                     of the node: read it again from <data_dir>/api.token (the CLI does this \
                     itself when run on the node's machine)"
                        .into(),
                );
            }
            Some(_) => {}
        }
        if has_body(&req) && !RAW_BODY_PATHS.contains(&req.uri().path()) && !is_json(&req) {
            g.refusals.count("content_type");
            return ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{} {} takes a JSON body: send `Content-Type: application/json`",
                    req.method(),
                    req.uri().path()
                ),
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(g.token.clone());
    req.extensions_mut().insert(g.refusals.clone());
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_hex_and_match_exactly() {
        let a = ApiToken::generate();
        let b = ApiToken::generate();
        assert_eq!(a.as_str().len(), 64);
        assert!(
            a.as_str()
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a.as_str(), b.as_str());
        assert!(a.matches(a.as_str()));
        assert!(!a.matches(b.as_str()));
        assert!(!a.matches(&a.as_str()[..63]));
        assert!(!a.matches(""));
        assert!(!ApiToken::new("").matches(""));
        assert!(!format!("{a:?}").contains(a.as_str()));
    }

    #[test]
    fn hosts_are_loopback_or_the_bound_address() {
        let lo: SocketAddr = "127.0.0.1:7460".parse().unwrap();
        for ok in [
            "127.0.0.1",
            "127.0.0.1:7460",
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:7460",
            "[::1]",
            "[::1]:7460",
        ] {
            assert!(host_allowed(ok, lo), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7460",
            "127.0.0.1.evil.example",
            "localhost.evil.example:7460",
            "192.168.1.5:7460",
            "",
            ":7460",
            "127.0.0.1:notaport",
            "[::1",
        ] {
            assert!(!host_allowed(bad, lo), "{bad}");
        }
        let lan: SocketAddr = "192.168.1.5:7460".parse().unwrap();
        assert!(host_allowed("192.168.1.5:7460", lan));
        assert!(host_allowed("192.168.1.5", lan));
        assert!(!host_allowed("192.168.1.5:9999", lan));
        assert!(!host_allowed("192.168.1.6:7460", lan));
        assert!(!host_allowed("node.example:7460", lan));
        let any: SocketAddr = "0.0.0.0:7460".parse().unwrap();
        assert!(host_allowed("10.0.0.3:7460", any));
        assert!(!host_allowed("node.example:7460", any));
    }

    #[test]
    fn per_address_names_follow_the_contract() {
        assert_eq!(
            token_file_name("127.0.0.1:7460".parse().unwrap()),
            "127.0.0.1_7460.token"
        );
        assert_eq!(
            token_file_name("[::1]:7460".parse().unwrap()),
            "__1_7460.token"
        );
    }

    #[cfg(unix)]
    #[test]
    fn token_files_are_private_and_removed_only_while_ours() {
        use std::os::unix::fs::PermissionsExt as _;
        let data = std::env::temp_dir().join(format!("agora-auth-{}", rand::random::<u64>()));
        let default = data.join("default");
        let t = ApiToken::generate();
        let bound: SocketAddr = "127.0.0.1:7999".parse().unwrap();
        let files = TokenFiles::write(&t, &data, &default, bound).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.data_file), 0o600);
        let addr = files.address_file.clone().unwrap();
        assert_eq!(addr, default.join("api").join("127.0.0.1_7999.token"));
        assert_eq!(mode(&addr), 0o600);
        assert_eq!(mode(&default.join("api")), 0o700);
        assert_eq!(
            std::fs::read_to_string(&files.data_file).unwrap().trim(),
            t.as_str()
        );
        // A newer node on the same address replaced the file: it stays.
        let newer = ApiToken::generate();
        let files2 = TokenFiles::write(&newer, &data, &default, bound).unwrap();
        files.remove();
        assert!(addr.exists());
        files2.remove();
        assert!(!addr.exists());
        let _ = std::fs::remove_dir_all(&data);
    }
}
