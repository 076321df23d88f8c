//! The web dashboard the node serves itself, and its live feed.
//!
//! - `GET /?token=T` -> the page (200) when `T` is the node's API token ([`ApiToken::matches`],
//!   from the request's extensions, put there by [`crate::auth::guard`]); 401 and a short page
//!   that says to run `agora dashboard` otherwise. The page carries no secret: its script reads the
//!   token from its own URL and sends it as a bearer header on the POSTs it makes.
//! - `GET /dashboard/app.js`, `/dashboard/app.css`, `/dashboard/icon.svg` -> the assets (no token).
//! - `GET /v1/events` -> server-sent events, read-only, no token: one `snapshot` event a second
//!   with what the page shows (status, peers, jobs, ledger, wallet, host), one JSON
//!   [`agora_api_types::Snapshot`] built through [`crate::convert`]. At most
//!   [`MAX_EVENT_STREAMS`] streams at once (503 beyond); a stream ends when its client goes.
//!
//! The assets live in `crates/api/dashboard/` and are compiled into the binary, so the page works
//! offline and no CDN is ever asked. Every response carries a Content-Security-Policy that allows
//! only this origin (no inline script, no frames, no form posts elsewhere) and no Referer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_api_types::{HostHealth, Snapshot};
use agora_node::NodeHandle;
use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Deserialize;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use crate::auth::ApiToken;
use crate::convert;

/// The most live event streams served at once.
pub const MAX_EVENT_STREAMS: usize = 16;
/// Time between two snapshots on a stream.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How long one snapshot serves every stream that asks.
const SNAPSHOT_REUSE: Duration = Duration::from_millis(500);
/// The most jobs (newest first) in a snapshot.
const MAX_SNAPSHOT_JOBS: usize = 200;
/// The most blocks and wallet events in a snapshot.
const MAX_SNAPSHOT_BLOCKS: usize = 10;
const MAX_SNAPSHOT_HISTORY: usize = 25;

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");
const ICON_SVG: &str = include_str!("../dashboard/icon.svg");

/// Only this origin; no inline code, no frames, no plugins, forms post here only.
const CSP: &str = "default-src 'self'; base-uri 'none'; frame-ancestors 'none'; \
                   form-action 'self'; object-src 'none'";

/// The page shown when the token is missing or wrong.
const REFUSED_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Agora dashboard: token needed</title></head>\n<body>\
<h1 id=\"refused\">This dashboard needs the node's API token</h1>\
<p>The link you opened has no token or a wrong one. On the node's machine, run \
<code>agora dashboard</code> (add <code>--api HOST:PORT</code> for a node that is not on \
127.0.0.1:7460) and open the link it prints. The node writes its token to \
<code>&lt;data_dir&gt;/api.token</code>; it changes at every start.</p></body></html>\n";

pub(crate) fn routes() -> Router<NodeHandle> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/app.css", get(app_css))
        .route("/dashboard/icon.svg", get(icon))
        .route("/v1/events", get(events))
        .layer(Extension(Streams::new()))
}

/// The last snapshot's JSON and when it was built.
type Cached = Option<(Instant, Arc<str>)>;

/// What the live streams share: a permit per open stream, and the last snapshot, which every
/// stream reuses while it is fresh, so that the node's work does not grow with the streams.
#[derive(Clone)]
pub(crate) struct Streams {
    permits: Arc<Semaphore>,
    last: Arc<Mutex<Cached>>,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            permits: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// The snapshot as JSON: the cached one while younger than [`SNAPSHOT_REUSE`], else a new
    /// one (one stream builds it; the others wait for it).
    async fn snapshot_json(&self, node: &NodeHandle) -> Arc<str> {
        let mut last = self.last.lock().await;
        if let Some((at, json)) = last.as_ref()
            && at.elapsed() < SNAPSHOT_REUSE
        {
            return json.clone();
        }
        let json: Arc<str> = match serde_json::to_string(&snapshot(node).await) {
            Ok(j) => j.into(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode the dashboard snapshot");
                return Arc::from("null");
            }
        };
        *last = Some((Instant::now(), json.clone()));
        json
    }
}

/// Headers every dashboard response carries.
fn hardened(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    r
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: Option<String>,
}

/// The page for `candidate`: 200 when it is the node's token, 401 otherwise.
fn page(token: &ApiToken, candidate: Option<&str>) -> Response {
    let ok = candidate.is_some_and(|c| token.matches(c));
    let mut r = if ok {
        hardened("text/html; charset=utf-8", INDEX_HTML)
    } else {
        hardened(
            "text/html; charset=utf-8",
            (StatusCode::UNAUTHORIZED, REFUSED_HTML),
        )
    };
    // The URL carries the token: keep it out of caches.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn index(Extension(token): Extension<ApiToken>, Query(q): Query<TokenQuery>) -> Response {
    page(&token, q.token.as_deref())
}

async fn app_js() -> Response {
    hardened("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    hardened("text/css; charset=utf-8", APP_CSS)
}

async fn icon() -> Response {
    hardened("image/svg+xml", ICON_SVG)
}

/// The dashboard's live feed: server-sent events, one `snapshot` event a second.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "events",
    tag = "dashboard",
    summary = "The dashboard's live feed (read-only, no token)",
    description = "Server-sent events (`text/event-stream`): a `snapshot` event at once, then one \
                   a second. Each event's `data` is one JSON `Snapshot` (the schema below): the \
                   node's status, peers, jobs, ledger, wallet, recent blocks and host, in the \
                   same types as the other endpoints. At most 16 streams are served at once.",
    responses(
        (status = 200, description = "A server-sent event stream; each event's data is one JSON \
            Snapshot", body = Snapshot, content_type = "text/event-stream"),
        (status = 503, description = "Too many streams are open; close a dashboard tab and \
            retry", body = agora_api_types::ErrorBody),
    )
)]
pub(crate) async fn events(
    State(node): State<NodeHandle>,
    Extension(streams): Extension<Streams>,
) -> Response {
    let Ok(permit) = streams.permits.clone().try_acquire_owned() else {
        return crate::ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_EVENT_STREAMS} live event streams are open already; close a dashboard tab \
                 and retry"
            ),
        )
        .into_response();
    };
    // The permit lives in the stream's state: it is released when the stream is dropped, which
    // axum does when the client goes.
    type Feed = (NodeHandle, Streams, OwnedSemaphorePermit, bool);
    let stream = futures::stream::unfold(
        (node, streams, permit, true),
        |(node, streams, permit, first): Feed| async move {
            if !first {
                tokio::time::sleep(SNAPSHOT_EVERY).await;
            }
            let json = streams.snapshot_json(&node).await;
            let event = Event::default().event("snapshot").data(&*json);
            Some((
                Ok::<Event, Infallible>(event),
                (node, streams, permit, false),
            ))
        },
    );
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn snapshot(node: &NodeHandle) -> Snapshot {
    let status = node.status().await.ok().map(convert::status);
    let reputation = node.reputation().await;
    let peers = node
        .peers()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|info| {
            let score = reputation
                .iter()
                .find(|(p, _)| *p == info.peer_id)
                .map(|(_, s)| *s);
            convert::snapshot_peer(info, score)
        })
        .collect();
    let records = node.jobs().await;
    let jobs = records
        .iter()
        .take(MAX_SNAPSHOT_JOBS)
        .map(convert::snapshot_job)
        .collect();
    let ledger = node.ledger_status().await.ok().map(convert::ledger_status);
    let wallet = node.own_account().ok().map(convert::account);
    let history = node
        .history(MAX_SNAPSHOT_HISTORY)
        .unwrap_or_default()
        .iter()
        .map(convert::history_entry)
        .collect();
    let from = ledger.as_ref().map_or(0, |l| {
        l.height.saturating_sub(MAX_SNAPSHOT_BLOCKS as u64 - 1)
    });
    let blocks = node
        .blocks(from, MAX_SNAPSHOT_BLOCKS)
        .unwrap_or_default()
        .iter()
        .rev()
        .map(convert::snapshot_block)
        .collect();
    Snapshot {
        at_ms: agora_types::now_ms(),
        status,
        peers,
        jobs_total: count(records.len()),
        jobs,
        ledger,
        wallet,
        history,
        blocks,
        host: host_health(node.config().executor_slots).await,
        training: None,
    }
}

fn count(x: usize) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// Load and memory from /proc where the host has it (Linux); `None` elsewhere.
async fn host_health(executor_slots: usize) -> HostHealth {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_avg = tokio::fs::read_to_string("/proc/loadavg")
        .await
        .ok()
        .and_then(|t| parse_loadavg(&t));
    let mem = tokio::fs::read_to_string("/proc/meminfo")
        .await
        .unwrap_or_default();
    HostHealth {
        cpus: count(cpus),
        executor_slots: count(executor_slots),
        load_avg,
        mem_total_bytes: meminfo_bytes(&mem, "MemTotal:"),
        mem_available_bytes: meminfo_bytes(&mem, "MemAvailable:"),
    }
}

fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_needs_the_right_token() {
        let t = "cd".repeat(32);
        let token = ApiToken::new(t.clone());
        let ok = page(&token, Some(&t));
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CACHE_CONTROL], "no-store");
        let near = format!("{}ce", "cd".repeat(31));
        for wrong in [None, Some("nope"), Some(""), Some(near.as_str())] {
            assert_eq!(page(&token, wrong).status(), StatusCode::UNAUTHORIZED);
        }
        let refused = page(&token, Some("x"));
        assert_eq!(
            refused.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }

    #[tokio::test]
    async fn assets_have_types_and_a_strict_policy() {
        for (r, ty) in [
            (app_js().await, "text/javascript; charset=utf-8"),
            (app_css().await, "text/css; charset=utf-8"),
        ] {
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[header::CONTENT_TYPE], ty);
            let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap_or_default();
            assert!(csp.starts_with("default-src 'self'"), "{csp}");
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn assets_load_nothing_from_elsewhere() {
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(
                !text.contains("http://"),
                "an asset refers to another origin"
            );
            assert!(
                !text.contains("https://"),
                "an asset refers to another origin"
            );
        }
        assert!(
            !INDEX_HTML.contains("<script>"),
            "inline script breaks the CSP"
        );
        assert!(INDEX_HTML.contains("/dashboard/app.js"));
    }

    #[test]
    fn host_figures_parse() {
        assert_eq!(
            parse_loadavg("0.50 1.25 2.00 3/400 1234\n"),
            Some([0.5, 1.25, 2.0])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        let mem = "MemTotal:       16000 kB\nMemFree: 1 kB\nMemAvailable:    8000 kB\n";
        assert_eq!(meminfo_bytes(mem, "MemTotal:"), Some(16000 * 1024));
        assert_eq!(meminfo_bytes(mem, "MemAvailable:"), Some(8000 * 1024));
        assert_eq!(meminfo_bytes(mem, "Swap:"), None);
    }
}
