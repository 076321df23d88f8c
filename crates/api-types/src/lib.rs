//! The contract of Agora's HTTP API: every request and answer as a Rust type.
//!
//! The node's server (`agora-api`) answers with these types, the `agora` CLI reads answers only
//! through them, and the OpenAPI 3.1 document served at `GET /v1/openapi.json` is generated from
//! them (each derives [`utoipa::ToSchema`]), so the three cannot drift apart. Ids, hashes and
//! peer ids travel as strings (hex hashes, base58 peer ids), amounts as whole tokens, instants
//! as Unix milliseconds.
//!
//! The job defaults (redundancy, price, limits, deadline) live here once, in [`defaults`]: the
//! CLI's flags and the node's handling of an omitted field both read them.
//!
//! With the `client` feature, [`Client`] is a typed async client with one method per endpoint;
//! it sends the node's API token as a bearer header when it is given one.
//!
//! ```
//! use agora_api_types::{JobState, SubmitRequest};
//!
//! let req = SubmitRequest::new("ab".repeat(32));
//! let json = serde_json::to_value(&req).unwrap();
//! assert_eq!(json["module"], "ab".repeat(32));
//! assert!(JobState::Verified.is_final());
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[cfg(feature = "client")]
mod client;
pub mod defaults;
mod estimate;
mod events;
mod jobs;
mod ledger;
mod node;

#[cfg(feature = "client")]
pub use client::{Client, ClientError};
pub use estimate::*;
pub use events::*;
pub use jobs::*;
pub use ledger::*;
pub use node::*;

/// Every error answer's body: `{"error": "..."}`, a sentence that says what was wrong and how to
/// fix it. The status code says whose fault it was (4xx the caller's, 5xx the node's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, and how to fix it.
    pub error: String,
}
