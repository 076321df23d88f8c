//! `dispatch`: not landed yet. It will time a job from submission to verified result through
//! the node's market (announce, bid, lease, run, result), against running the same job
//! directly in the sandbox in the same run. The market is being wired into the node now; when
//! it lands, this module is the only one to fill in (its `run` is already called by
//! [`crate::run`] and listed in [`crate::BENCHES`]).

use serde_json::{Value, json};

use crate::Opts;

pub(crate) async fn run(_opts: &Opts) -> anyhow::Result<Value> {
    Ok(json!({
        "bench": "dispatch",
        "status": "not_landed",
        "reason": "job dispatch through the node's market is being wired into agora-node; this benchmark will measure submit-to-verified-result latency against a direct sandbox run once it lands",
    }))
}
