//! Finding a node's API token (the contract in `agora_api::auth`): the `--token` flag or
//! `AGORA_API_TOKEN`; then the per-address file the node wrote,
//! `<default_data_dir>/api/<ip>_<port>.token` for the `--api` address (`localhost` read as
//! 127.0.0.1); then, for a loopback target only, the files of a node bound to every address
//! and `<AGORA_DATA_DIR or default_data_dir>/api.token` (a local token never goes elsewhere).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The variable that carries a token, as `--token` does.
pub const ENV: &str = "AGORA_API_TOKEN";

/// The socket address `api` names (a bare `HOST:PORT` or a URL), `localhost` read as 127.0.0.1;
/// `None` for any other host name.
pub fn socket_of(api: &str) -> Option<SocketAddr> {
    let rest = api
        .strip_prefix("http://")
        .or_else(|| api.strip_prefix("https://"))
        .unwrap_or(api);
    let hostport = rest.split('/').next().unwrap_or(rest);
    if let Some((host, port)) = hostport.split_once(':')
        && host.eq_ignore_ascii_case("localhost")
    {
        return Some(SocketAddr::new(
            IpAddr::from([127, 0, 0, 1]),
            port.parse().ok()?,
        ));
    }
    hostport.parse().ok()
}

/// The token files to try for `api`, in order. A node on this machine bound to every address
/// (`0.0.0.0`, `[::]`) is found through loopback too. The data dir's `api.token` is tried only
/// for a loopback target: this machine's token is never sent to another machine.
pub fn paths(api: &str) -> Vec<PathBuf> {
    let default_dir = agora_node::config::default_data_dir();
    let mut out = Vec::with_capacity(4);
    let Some(addr) = socket_of(api) else {
        return out;
    };
    let file = |ip: IpAddr| {
        default_dir
            .join("api")
            .join(agora_api::auth::token_file_name(SocketAddr::new(
                ip,
                addr.port(),
            )))
    };
    out.push(file(addr.ip()));
    if addr.ip().is_loopback() {
        out.push(file(IpAddr::from([0, 0, 0, 0])));
        out.push(file(IpAddr::from([0u16; 8])));
        let data_dir = std::env::var_os("AGORA_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or(default_dir);
        out.push(data_dir.join("api.token"));
    }
    out
}

fn read(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn nonempty(t: Option<&str>) -> Option<String> {
    t.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// The token for the node at `api`: `given` (the flag), else the variable, else the files;
/// `None` when none is found (read-only calls work without one).
pub fn find(api: &str, given: Option<&str>) -> Option<String> {
    nonempty(given)
        .or_else(|| nonempty(std::env::var(ENV).ok().as_deref()))
        .or_else(|| paths(api).iter().find_map(|p| read(p)))
}

/// What to tell a user whose request was refused for want of a token (none found, or one that
/// is not the node's).
pub fn hint(api: &str) -> String {
    let tried: Vec<String> = paths(api).iter().map(|p| p.display().to_string()).collect();
    format!(
        "token files looked for, in order: {}; run this on the node's machine as the user \
         that runs the node, or pass --token / {ENV}",
        if tried.is_empty() {
            "none (the --api host is not an IP address)".to_string()
        } else {
            tried.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_their_files_and_the_flag_wins() {
        let local = socket_of("http://localhost:9000/").unwrap();
        assert_eq!(local, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(socket_of("[::1]:7460"), Some("[::1]:7460".parse().unwrap()));
        assert_eq!(socket_of("node.example:7460"), None);
        let p = paths("127.0.0.1:7460");
        assert!(p[0].ends_with("api/127.0.0.1_7460.token"), "{p:?}");
        assert!(p[1].ends_with("api/0.0.0.0_7460.token"), "{p:?}");
        assert!(p[2].ends_with("api/___7460.token"), "{p:?}");
        assert!(p[3].ends_with("api.token"), "{p:?}");
        // Another machine gets only the per-address file, never this machine's api.token.
        let remote = paths("192.168.1.5:7460");
        assert_eq!(remote.len(), 1, "{remote:?}");
        assert!(paths("node.example:1").is_empty());
        assert_eq!(
            find("node.example:1", Some(" abc \n")).as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn files_are_read_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.token");
        assert_eq!(read(&p), None);
        std::fs::write(&p, "  abc\n").unwrap();
        assert_eq!(read(&p).as_deref(), Some("abc"));
        std::fs::write(&p, "\n").unwrap();
        assert_eq!(read(&p), None);
    }
}
