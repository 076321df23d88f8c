//! `agora node`: layer the configuration, start the node and its API, stop on a signal.

use std::process::ExitCode;
use std::time::Duration;

use agora_node::{FileConfig, LogFormat, Node, NodeConfig, Preset};
use anyhow::{Context, Result};

use crate::cmd::NodeArgs;
use crate::logging;

/// The configuration given by flags and variables, as a layer over the file.
fn flag_layer(a: &NodeArgs) -> Result<FileConfig> {
    let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Ok(FileConfig {
        preset: a.preset.as_deref().map(str::parse::<Preset>).transpose()?,
        data_dir: a.data_dir.clone(),
        listen: nonempty(&a.listen),
        bootstrap: nonempty(&a.bootstrap),
        static_peers: nonempty(&a.static_peers),
        mdns: a.no_mdns.then_some(false),
        api: a.api.clone(),
        log_format: a
            .log_format
            .as_deref()
            .map(str::parse::<LogFormat>)
            .transpose()?,
        price: a.price,
        executor_slots: a.executor_slots,
        genesis: a.genesis.clone(),
        consensus_listen: a.consensus_listen.clone(),
        consensus_peers: nonempty(&a.consensus_peers),
        block_time_ms: a.block_time_ms,
        authorization: a.authorization.clone(),
        allow_list: nonempty(&a.allow_list),
        credit_per_worker: a.credit_per_worker,
        ..FileConfig::default()
    })
}

/// Builds the validated configuration from file, variables and flags.
pub fn config(a: &NodeArgs) -> Result<NodeConfig> {
    let file = match &a.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let mut c = NodeConfig::validate(file.overlay(flag_layer(a)?))?;
    c.byzantine = a.byzantine;
    Ok(c)
}

pub fn run(a: NodeArgs) -> Result<ExitCode> {
    let config = config(&a)?;
    logging::init(config.log_format == LogFormat::Json);
    #[cfg(target_os = "linux")]
    if a.exit_with_parent {
        let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
        if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
            anyhow::bail!("the parent process is gone");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config))
}

async fn serve(config: NodeConfig) -> Result<ExitCode> {
    let api_addr = config.api;
    let node = Node::start(config).await?;
    let (api_stop_tx, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(agora_api::serve(node.handle(), api_addr, async move {
        let _ = api_stop_rx.await;
    }));
    let signal = wait_for_signal();
    tokio::pin!(signal);
    let api_failed = tokio::select! {
        s = &mut signal => {
            tracing::info!(signal = s, "shutting down");
            None
        }
        r = api => Some(r),
    };
    let _ = api_stop_tx.send(());
    // Everything must be down within 5 s of the signal.
    if tokio::time::timeout(Duration::from_secs(4), node.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown took too long; exiting anyway");
    }
    match api_failed {
        Some(Ok(Err(e))) => Err(anyhow::anyhow!(e)),
        Some(Err(e)) => Err(anyhow::anyhow!("API task failed: {e}")),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
pub async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
