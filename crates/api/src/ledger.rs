//! The ledger's endpoints: status, accounts, recent blocks, and this node's wallet.
//!
//! Reads answer from the node's in-memory ledger. Wallet writes sign a transaction with the
//! node's own key, gossip it, and by default wait for the block that holds it (`?wait=false`
//! returns at once); the answer says whether the ledger applied it and, if not, why.

use agora_ledger::{AccountId, TxKind};
use agora_node::{LedgerError, NodeHandle};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::ApiError;

/// The most block receipts one request returns.
const MAX_BLOCKS: usize = 500;

pub(crate) fn routes() -> Router<NodeHandle> {
    Router::new()
        .route("/v1/ledger/status", get(status))
        .route("/v1/ledger/accounts/{id}", get(account))
        .route("/v1/ledger/blocks", get(blocks))
        .route("/v1/wallet", get(wallet))
        .route("/v1/wallet/history", get(history))
        .route("/v1/wallet/transfer", post(transfer))
        .route("/v1/wallet/stake", post(stake))
        .route("/v1/wallet/unstake", post(unstake))
}

fn ledger_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::Disabled | LedgerError::Refused(_) => ApiError::bad_request(e),
        LedgerError::UnknownAccount(_) => ApiError::not_found(e),
        LedgerError::Timeout(..) => ApiError(axum::http::StatusCode::ACCEPTED, e.to_string()),
        _ => ApiError::internal(e),
    }
}

async fn status(
    State(node): State<NodeHandle>,
) -> Result<Json<agora_node::LedgerStatus>, ApiError> {
    node.ledger_status().await.map(Json).map_err(ledger_error)
}

async fn account(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<Json<agora_node::AccountView>, ApiError> {
    node.account(&id).map(Json).map_err(ledger_error)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlocksQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn blocks(
    State(node): State<NodeHandle>,
    Query(q): Query<BlocksQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).min(MAX_BLOCKS);
    let blocks = node.blocks(q.from, limit).map_err(ledger_error)?;
    Ok(Json(serde_json::json!({ "blocks": blocks })))
}

async fn wallet(State(node): State<NodeHandle>) -> Result<Json<agora_node::AccountView>, ApiError> {
    let me = node.local_account().map_err(ledger_error)?;
    node.account(&me.to_string())
        .map(Json)
        .map_err(ledger_error)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn history(
    State(node): State<NodeHandle>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let events = node
        .history(q.limit.unwrap_or(50).min(10_000))
        .map_err(ledger_error)?;
    let events: Vec<serde_json::Value> = events
        .into_iter()
        .map(|(height, e)| serde_json::json!({"height": height, "event": e}))
        .collect();
    Ok(Json(serde_json::json!({ "events": events })))
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: String,
    amount: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: u64,
}

async fn send(
    node: &NodeHandle,
    kind: TxKind,
    wait: Option<bool>,
) -> Result<Json<agora_node::TxOutcome>, ApiError> {
    node.send_tx(kind, wait.unwrap_or(true))
        .await
        .map(Json)
        .map_err(ledger_error)
}

fn positive(amount: u64) -> Result<u64, ApiError> {
    if amount == 0 {
        return Err(ApiError::bad_request("`amount` must be above 0"));
    }
    Ok(amount)
}

async fn transfer(
    State(node): State<NodeHandle>,
    Query(w): Query<WaitQuery>,
    Json(b): Json<TransferBody>,
) -> Result<Json<agora_node::TxOutcome>, ApiError> {
    let to =
        b.to.parse::<agora_types::PeerId>()
            .ok()
            .and_then(|p| AccountId::from_peer_id(&p))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`to` = {:?} is not a peer id (what `agora id` prints)",
                    b.to
                ))
            })?;
    let amount = positive(b.amount)?;
    send(&node, TxKind::Transfer { to, amount }, w.wait).await
}

async fn stake(
    State(node): State<NodeHandle>,
    Query(w): Query<WaitQuery>,
    Json(b): Json<AmountBody>,
) -> Result<Json<agora_node::TxOutcome>, ApiError> {
    let amount = positive(b.amount)?;
    send(&node, TxKind::Stake { amount }, w.wait).await
}

async fn unstake(
    State(node): State<NodeHandle>,
    Query(w): Query<WaitQuery>,
    Json(b): Json<AmountBody>,
) -> Result<Json<agora_node::TxOutcome>, ApiError> {
    let amount = positive(b.amount)?;
    send(&node, TxKind::Unstake { amount }, w.wait).await
}
