//! The API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations
//! and the types of [`agora_api_types`], served at `GET /v1/openapi.json` and printed by
//! `agora api openapi`.
//!
//! Every route of the router is in it: a test reads the router's source and fails on a route
//! the document does not list. A new endpoint gets a `#[utoipa::path]` on its handler and a line
//! in [`ApiDoc`]'s `paths(...)`.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The name of the bearer-token security scheme in the document.
pub const TOKEN_SCHEME: &str = "api_token";

/// The document's source: every annotated handler and every schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Agora node API",
        description = "The HTTP API of one Agora node: its status and peers, blobs and jobs, \
                       the ledger and the node's wallet. Errors are JSON `{\"error\": \"...\"}`. \
                       Requests that change state or spend (every POST) need the node's API \
                       token as `Authorization: Bearer <token>`; the node writes it to \
                       `<data_dir>/api.token` at start.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        crate::status,
        crate::peers,
        crate::metrics,
        serve,
        crate::jobs::put_blob,
        crate::jobs::submit,
        crate::jobs::list,
        crate::jobs::show,
        crate::jobs::output,
        crate::jobs::cancel,
        crate::estimate::estimate,
        crate::ledger::status,
        crate::ledger::account,
        crate::ledger::blocks,
        crate::ledger::wallet,
        crate::ledger::history,
        crate::ledger::transfer,
        crate::ledger::stake,
        crate::ledger::unstake,
        crate::dashboard::events,
    ),
    components(schemas(agora_api_types::ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "node", description = "Identity, peers, metrics and this document"),
        (name = "jobs", description = "Blobs and jobs submitted through this node"),
        (name = "ledger", description = "The replicated ledger"),
        (name = "wallet", description = "This node's own account"),
        (name = "dashboard", description = "The live feed of the web dashboard"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer token and requires it on every POST.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            TOKEN_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The node's API token, from <data_dir>/api.token (64 hex characters)",
                    ))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            if let Some(op) = item.post.as_mut() {
                op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                    TOKEN_SCHEME,
                    Vec::<String>::new(),
                )]);
            }
        }
    }
}

/// The document.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as pretty JSON.
pub fn json() -> String {
    document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the OpenAPI document: {e}\"}}"))
}

/// This document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "node",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object,
        content_type = "application/json"))
)]
pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.route("PATH", METHOD(handler)...)` in this crate's sources, with its methods.
    fn routes_in_source() -> Vec<(String, Vec<String>)> {
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut files = vec![];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
                    files.push(path);
                }
            }
        }
        let mut out = vec![];
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            for chunk in text.split(".route(").skip(1) {
                let Some(rest) = chunk.trim_start().strip_prefix('"') else {
                    continue;
                };
                let Some((route, rest)) = rest.split_once('"') else {
                    continue;
                };
                let end = [".route(", ".merge(", ".layer(", ".with_state(", ";"]
                    .iter()
                    .filter_map(|t| rest.find(t))
                    .min()
                    .unwrap_or(rest.len());
                let call = &rest[..end];
                let methods = ["get", "post", "put", "delete", "patch"]
                    .into_iter()
                    .filter(|m| {
                        call.match_indices(&format!("{m}("))
                            .any(|(i, _)| i == 0 || !call.as_bytes()[i - 1].is_ascii_alphanumeric())
                    })
                    .map(str::to_string)
                    .collect();
                out.push((route.to_string(), methods));
            }
        }
        out
    }

    #[test]
    fn the_document_lists_every_api_route_with_its_methods() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
        let routes = routes_in_source();
        // The scan must see the router, or this test proves nothing.
        assert!(
            routes.iter().any(|(r, _)| r == "/v1/jobs/{id}"),
            "{routes:?}"
        );
        for (route, methods) in &routes {
            // The dashboard's page and assets are HTML, not API.
            if !(route.starts_with("/v1/") || route == "/metrics") {
                continue;
            }
            let item = &doc["paths"][route];
            assert!(
                item.is_object(),
                "route {route} is served but not in the OpenAPI document: give its handler a \
                 #[utoipa::path] and list it in ApiDoc's paths(...) (crates/api/src/openapi.rs)"
            );
            assert!(!methods.is_empty(), "no method found for {route}");
            for m in methods {
                assert!(
                    item[m].is_object(),
                    "{} {route} is served but not documented",
                    m.to_uppercase()
                );
            }
        }
        let documented = doc["paths"].as_object().unwrap();
        for path in documented.keys() {
            assert!(
                routes.iter().any(|(r, _)| r == path),
                "{path} is documented but no route serves it"
            );
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(document()).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_default().to_string();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(seen.insert(id.clone()), "operationId {id} is used twice");
            }
        }
    }

    #[test]
    fn every_post_requires_the_token_and_reads_are_open() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(
            doc["components"]["securitySchemes"][TOKEN_SCHEME]["scheme"],
            "bearer"
        );
        for (path, item) in doc["paths"].as_object().unwrap() {
            if let Some(post) = item.get("post") {
                assert!(
                    post["security"][0].get(TOKEN_SCHEME).is_some(),
                    "POST {path} does not declare the token"
                );
            }
            if let Some(get) = item.get("get") {
                assert!(get.get("security").is_none(), "GET {path} asks for a token");
            }
        }
    }

    /// The live feed is documented with the snapshot's schema as its event stream's content,
    /// and that schema names what the dashboard reads.
    #[test]
    fn the_live_feed_is_typed() {
        let doc = serde_json::to_value(document()).unwrap();
        let op = &doc["paths"]["/v1/events"]["get"];
        assert_eq!(op["tags"][0], "dashboard", "{op}");
        let ok = &op["responses"]["200"];
        assert_eq!(
            ok["content"]["text/event-stream"]["schema"]["$ref"], "#/components/schemas/Snapshot",
            "{ok}"
        );
        assert!(
            ok["description"]
                .as_str()
                .unwrap()
                .contains("JSON Snapshot"),
            "{ok}"
        );
        let limit = crate::dashboard::MAX_EVENT_STREAMS.to_string();
        assert!(
            op["description"].as_str().unwrap().contains(&limit),
            "the description must say how many streams are served: {op}"
        );
        assert!(op["responses"]["503"]["content"]["application/json"].is_object());
        let s = &doc["components"]["schemas"];
        for field in [
            "status",
            "peers",
            "jobs",
            "jobs_total",
            "ledger",
            "wallet",
            "history",
        ] {
            assert!(
                s["Snapshot"]["properties"][field].is_object(),
                "{}",
                s["Snapshot"]
            );
        }
        for (schema, field) in [
            ("SnapshotBlock", "failed_txs"),
            ("HostHealth", "load_avg"),
            ("TrainingRound", "round"),
        ] {
            assert!(
                s[schema]["properties"][field].is_object(),
                "{schema}.{field}"
            );
        }
        // A peer and a job carry the endpoint's own type (flattened) and the extra figures.
        for (schema, base, extra) in [
            ("SnapshotPeer", "PeerInfo", "relayed"),
            ("SnapshotJob", "JobSummary", "leases_active"),
        ] {
            let text = s[schema].to_string();
            assert!(
                text.contains(&format!("#/components/schemas/{base}")),
                "{text}"
            );
            assert!(text.contains(&format!("\"{extra}\"")), "{text}");
        }
    }

    #[test]
    fn schemas_name_the_fields_clients_read() {
        let doc = serde_json::to_value(document()).unwrap();
        let s = &doc["components"]["schemas"];
        for (schema, field) in [
            ("JobView", "leases"),
            ("JobView", "exit_code"),
            ("JobSummary", "latency_ms"),
            ("NodeStatus", "connected_peers"),
            ("LedgerStatus", "settled_jobs"),
            ("TxOutcome", "applied"),
            ("ErrorBody", "error"),
        ] {
            assert!(
                s[schema]["properties"][field].is_object(),
                "{schema}.{field} missing: {}",
                s[schema]
            );
        }
    }
}
