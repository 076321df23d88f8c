//! `agora dashboard`: print (and optionally open) the link to a node's web dashboard.
//!
//! The dashboard at `http://<api>/` needs the node's API token in its link (`?token=`). This
//! command finds the token the way every client does ([`crate::token::find`]: --token /
//! AGORA_API_TOKEN, then the token files the node wrote on this machine), checks that the node
//! accepts it, and prints the link on stdout.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cmd::ApiArgs;

#[derive(Args, Debug)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub node: ApiArgs,
    /// Also open the link in the desktop's browser (xdg-open), when a display exists.
    #[arg(long)]
    pub open: bool,
}

pub fn run(a: DashboardArgs) -> Result<ExitCode> {
    let base = base_url(&a.node.api);
    let Some(token) = crate::token::find(&a.node.api, a.node.token.as_deref()) else {
        bail!(
            "no API token for the node at {}: {}; the node writes its token to \
             <data_dir>/api.token at start",
            a.node.api,
            crate::token::hint(&a.node.api)
        );
    };
    let url = format!("{base}/?token={token}");
    crate::client::block_on(check(&base, &url))?;
    outln!("{url}");
    if a.open {
        open(&url);
    }
    Ok(ExitCode::SUCCESS)
}

/// `http://HOST:PORT` for what `--api` says (a bare address or a URL).
fn base_url(api: &str) -> String {
    if api.starts_with("http://") || api.starts_with("https://") {
        api.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", api.trim_end_matches('/'))
    }
}

/// Asks the node for the page with the token, so a stale token says so now, not in the browser.
async fn check(base: &str, url: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    // The URL carries the token: keep it out of the error (reqwest's names the URL).
    let r = http
        .get(url)
        .send()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| {
            format!("cannot reach the node at {base}; is `agora node` running? (set --api)")
        })?;
    match r.status() {
        s if s.is_success() => Ok(()),
        reqwest::StatusCode::UNAUTHORIZED => bail!(
            "the node at {base} refused the token: it is not this node's (a token changes at \
             every start, and each node has its own); pass the right one with --token"
        ),
        s => bail!("the node at {base} answered {s} for its dashboard"),
    }
}

/// Opens `url` with xdg-open when a display exists; otherwise says how to open it.
fn open(url: &str) {
    let has_display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !has_display {
        eprintln!("no display here (DISPLAY is unset): open the link above in a browser");
        return;
    }
    let spawned = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("cannot run xdg-open ({e}): open the link above in a browser");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_have_one_scheme() {
        assert_eq!(base_url("127.0.0.1:7460"), "http://127.0.0.1:7460");
        assert_eq!(base_url("http://127.0.0.1:7460/"), "http://127.0.0.1:7460");
    }
}
