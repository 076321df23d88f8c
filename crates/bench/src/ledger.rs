//! `ledger`: not landed. The ledger (issue 5) does not exist yet, so there is nothing to
//! measure; the report says so rather than inventing a number.

use serde_json::{Value, json};

use crate::Opts;

pub(crate) async fn run(_opts: &Opts) -> anyhow::Result<Value> {
    Ok(json!({
        "bench": "ledger",
        "status": "not_landed",
        "reason": "the ledger (issue 5) has not landed",
    }))
}
