//! The ledger's endpoints: status, accounts, recent blocks, and this node's wallet.
//!
//! Reads answer from the node's in-memory ledger. Wallet writes sign a transaction with the
//! node's own key, gossip it, and by default wait for the block that holds it (`?wait=false`
//! returns at once); the answer says whether the ledger applied it and, if not, why.

use agora_api_types::{
    AccountView, AmountRequest, Blocks, BlocksQuery, ErrorBody, History, HistoryQuery,
    LedgerStatus, TransferRequest, TxOutcome, WaitQuery,
};
use agora_ledger::{AccountId, TxKind};
use agora_node::{LedgerError, NodeHandle};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::{ApiError, convert};

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

/// The status of a ledger refusal: the caller's fault (4xx) unless the node is stopping or its
/// mempool is full (503: retry).
fn refusal_status(reason: &str) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    if reason.contains("insufficient") {
        StatusCode::PAYMENT_REQUIRED
    } else if reason.contains("mempool is full") || reason.contains("already waiting") {
        StatusCode::SERVICE_UNAVAILABLE
    } else if reason.contains("nonce") {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_REQUEST
    }
}

fn ledger_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::Disabled => ApiError::bad_request(e),
        LedgerError::Refused(ref r) => ApiError(refusal_status(r), e.to_string()),
        LedgerError::UnknownAccount(_) => ApiError::not_found(e),
        LedgerError::Timeout(..) => ApiError(axum::http::StatusCode::ACCEPTED, e.to_string()),
        LedgerError::Stopped => {
            ApiError(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        _ => ApiError::internal(e),
    }
}

/// The most wallet events one request returns.
const MAX_HISTORY: u64 = 10_000;

/// The ledger's height, state root, validators, supply and open escrows.
#[utoipa::path(
    get,
    path = "/v1/ledger/status",
    operation_id = "ledger_status",
    tag = "ledger",
    responses(
        (status = 200, description = "The ledger", body = LedgerStatus),
        (status = 400, description = "The node runs without a ledger (no --genesis)", body = ErrorBody),
    )
)]
async fn status(State(node): State<NodeHandle>) -> Result<Json<LedgerStatus>, ApiError> {
    let s = node.ledger_status().await.map_err(ledger_error)?;
    Ok(Json(convert::ledger_status(s)))
}

/// An account, by peer id.
#[utoipa::path(
    get,
    path = "/v1/ledger/accounts/{id}",
    operation_id = "ledger_account",
    tag = "ledger",
    params(("id" = String, Path, description = "The account's peer id")),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 400, description = "The node runs without a ledger", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
async fn account(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let a = node.account(&id).map_err(ledger_error)?;
    Ok(Json(convert::account(a)))
}

/// Receipts of recent blocks from height `from`, oldest first.
#[utoipa::path(
    get,
    path = "/v1/ledger/blocks",
    operation_id = "ledger_blocks",
    tag = "ledger",
    params(BlocksQuery),
    responses(
        (status = 200, description = "The blocks", body = Blocks),
        (status = 400, description = "The node runs without a ledger", body = ErrorBody),
    )
)]
async fn blocks(
    State(node): State<NodeHandle>,
    Query(q): Query<BlocksQuery>,
) -> Result<Json<Blocks>, ApiError> {
    let limit = usize::try_from(q.limit.unwrap_or(100))
        .unwrap_or(MAX_BLOCKS)
        .min(MAX_BLOCKS);
    let blocks = node.blocks(q.from, limit).map_err(ledger_error)?;
    Ok(Json(Blocks {
        blocks: blocks.iter().map(convert::block).collect(),
    }))
}

/// This node's own account.
#[utoipa::path(
    get,
    path = "/v1/wallet",
    tag = "wallet",
    responses(
        (status = 200, description = "This node's account", body = AccountView),
        (status = 400, description = "The node runs without a ledger", body = ErrorBody),
    )
)]
async fn wallet(State(node): State<NodeHandle>) -> Result<Json<AccountView>, ApiError> {
    let a = node.own_account().map_err(ledger_error)?;
    Ok(Json(convert::account(a)))
}

/// Payments, escrows, slashes and transfers that concern this node, newest first.
#[utoipa::path(
    get,
    path = "/v1/wallet/history",
    operation_id = "wallet_history",
    tag = "wallet",
    params(HistoryQuery),
    responses(
        (status = 200, description = "Newest first", body = History),
        (status = 400, description = "The node runs without a ledger", body = ErrorBody),
    )
)]
async fn history(
    State(node): State<NodeHandle>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    let limit = usize::try_from(q.limit.unwrap_or(50).min(MAX_HISTORY)).unwrap_or(50);
    let events = node.history(limit).map_err(ledger_error)?;
    Ok(Json(History {
        events: events.iter().map(convert::history_entry).collect(),
    }))
}

async fn send(
    node: &NodeHandle,
    kind: TxKind,
    wait: Option<bool>,
) -> Result<Json<TxOutcome>, ApiError> {
    let t = node
        .send_tx(kind, wait.unwrap_or(true))
        .await
        .map_err(ledger_error)?;
    if wait.unwrap_or(true) && !t.applied {
        // In a block but not applied: the ledger refused it (4xx, JSON `{"error": ...}`).
        let reason = t.error.clone().unwrap_or_else(|| "no reason given".into());
        return Err(ApiError(
            refusal_status(&reason),
            format!(
                "{} {} refused by the ledger at height {}: {reason}",
                t.kind, t.tx_id, t.height
            ),
        ));
    }
    Ok(Json(convert::tx_outcome(t)))
}

fn positive(amount: u64) -> Result<u64, ApiError> {
    if amount == 0 {
        return Err(ApiError::bad_request("`amount` must be above 0"));
    }
    Ok(amount)
}

/// Sends tokens from this node's account; by default waits for the block that holds it.
#[utoipa::path(
    post,
    path = "/v1/wallet/transfer",
    tag = "wallet",
    params(WaitQuery),
    request_body = TransferRequest,
    responses(
        (status = 200, description = "In a block (see `applied`), or sent when wait=false", body = TxOutcome),
        (status = 202, description = "Sent, but not in a block within 30 s", body = ErrorBody),
        (status = 400, description = "Refused, or no ledger", body = ErrorBody),
        (status = 402, description = "Refused: the balance or stake is insufficient", body = ErrorBody),
        (status = 409, description = "Refused: a nonce conflict, or refused in its block", body = ErrorBody),
        (status = 503, description = "The mempool is full or the node is stopping; retry", body = ErrorBody),
    )
)]
async fn transfer(
    State(node): State<NodeHandle>,
    Query(w): Query<WaitQuery>,
    Json(b): Json<TransferRequest>,
) -> Result<Json<TxOutcome>, ApiError> {
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

/// Bonds tokens of this node's account as stake.
#[utoipa::path(
    post,
    path = "/v1/wallet/stake",
    tag = "wallet",
    params(WaitQuery),
    request_body = AmountRequest,
    responses(
        (status = 200, description = "In a block (see `applied`), or sent when wait=false", body = TxOutcome),
        (status = 202, description = "Sent, but not in a block within 30 s", body = ErrorBody),
        (status = 400, description = "Refused, or no ledger", body = ErrorBody),
        (status = 402, description = "Refused: the balance or stake is insufficient", body = ErrorBody),
        (status = 409, description = "Refused: a nonce conflict, or refused in its block", body = ErrorBody),
        (status = 503, description = "The mempool is full or the node is stopping; retry", body = ErrorBody),
    )
)]
async fn stake(
    State(node): State<NodeHandle>,
    Query(w): Query<WaitQuery>,
    Json(b): Json<AmountRequest>,
) -> Result<Json<TxOutcome>, ApiError> {
    let amount = positive(b.amount)?;
    send(&node, TxKind::Stake { amount }, w.wait).await
}

/// Starts unbonding stake; it returns to the balance after the unbonding period.
#[utoipa::path(
    post,
    path = "/v1/wallet/unstake",
    tag = "wallet",
    params(WaitQuery),
    request_body = AmountRequest,
    responses(
        (status = 200, description = "In a block (see `applied`), or sent when wait=false", body = TxOutcome),
        (status = 202, description = "Sent, but not in a block within 30 s", body = ErrorBody),
        (status = 400, description = "Refused, or no ledger", body = ErrorBody),
        (status = 402, description = "Refused: the balance or stake is insufficient", body = ErrorBody),
        (status = 409, description = "Refused: a nonce conflict, or refused in its block", body = ErrorBody),
        (status = 503, description = "The mempool is full or the node is stopping; retry", body = ErrorBody),
    )
)]
async fn unstake(
    State(node): State<NodeHandle>,
    Query(w): Query<WaitQuery>,
    Json(b): Json<AmountRequest>,
) -> Result<Json<TxOutcome>, ApiError> {
    let amount = positive(b.amount)?;
    send(&node, TxKind::Unstake { amount }, w.wait).await
}
