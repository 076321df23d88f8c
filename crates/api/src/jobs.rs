//! Job endpoints (filled in with the market).

use agora_node::NodeHandle;
use axum::Router;

pub(crate) fn routes() -> Router<NodeHandle> {
    Router::new()
}
