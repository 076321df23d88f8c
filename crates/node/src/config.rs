//! The node's user-facing configuration: a TOML file, `AGORA_*` variables and flags.
//!
//! Layering, lowest first: the named preset (`local` or `production`), the TOML file, then
//! the environment and flags (the CLI merges those two; a flag wins over its variable). Every
//! value is validated once, in [`NodeConfig::validate`], and a bad one is reported as a single
//! line naming the field, the value, and what would be valid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use agora_net::Multiaddr;
use serde::{Deserialize, Serialize};

/// A named set of defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// A devnet on this machine: loopback, ephemeral ports, fast timers.
    #[default]
    Local,
    /// A node on a real network: all interfaces, port 7470, mDNS on, slower timers.
    Production,
}

impl FromStr for Preset {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "local" => Ok(Preset::Local),
            "production" => Ok(Preset::Production),
            other => Err(ConfigError::field(
                "preset",
                other,
                "`local` or `production`",
            )),
        }
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::field("log_format", other, "`text` or `json`")),
        }
    }
}

/// A configuration error: one line, naming the field, the value and what would be valid.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field has a bad value.
    #[error("invalid config: `{field}` = `{value}`: expected {expected}")]
    Field {
        /// Its name, as in the TOML file.
        field: String,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// The TOML file could not be read or parsed.
    #[error("cannot read config file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl ConfigError {
    /// An error about `field`.
    pub fn field(
        field: impl Into<String>,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        let value: String = value.to_string().chars().take(200).collect();
        ConfigError::Field {
            field: field.into(),
            value,
            expected: expected.into(),
        }
    }
}

/// The configuration as written by people: everything optional, strings for addresses. Unknown
/// keys are refused, so a typo does not pass silently.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `local` or `production`.
    pub preset: Option<Preset>,
    /// Where the identity key, database and blobs live.
    pub data_dir: Option<PathBuf>,
    /// Multiaddrs to listen on.
    pub listen: Option<Vec<String>>,
    /// Multiaddrs of bootstrap peers.
    pub bootstrap: Option<Vec<String>>,
    /// Multiaddrs of peers to keep connected.
    pub static_peers: Option<Vec<String>>,
    /// Discover peers on the LAN.
    pub mdns: Option<bool>,
    /// HTTP API address, `HOST:PORT`.
    pub api: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<LogFormat>,
    /// The most connections in all.
    pub max_connections: Option<u32>,
    /// Executor slots (concurrent jobs); 0 means one per core.
    pub executor_slots: Option<usize>,
    /// The price this node asks per execution.
    pub price: Option<u64>,
    /// Seconds between capability ads.
    pub ad_interval_secs: Option<u64>,
    /// A genesis file: join that network's ledger (escrow, staking, consensus). Without one
    /// the node trades without payment.
    pub genesis: Option<PathBuf>,
    /// Where the consensus engine listens, `IP:PORT` (port 0: any free port).
    pub consensus_listen: Option<String>,
    /// Consensus endpoints to dial, `IP:PORT`, besides those the genesis file names.
    pub consensus_peers: Option<Vec<String>>,
    /// Target milliseconds between blocks.
    pub block_time_ms: Option<u64>,
    /// `open` (anyone connects; only staked peers bid) or `permissioned` (only peers in the
    /// ledger's stake set or the allow list complete a connection).
    pub authorization: Option<String>,
    /// Peer ids always allowed to connect in `permissioned` mode.
    pub allow_list: Option<Vec<String>>,
    /// The most bytes of blobs (modules, inputs, outputs) kept on disk; least recently used
    /// blobs no job needs are evicted to stay below (1 GiB local, 10 GiB production).
    pub blob_quota_bytes: Option<u64>,
    /// The largest job input, in bytes, this node submits or runs (64 MiB in both presets); a
    /// worker does not bid on, and refuses a lease of, a job whose signed input size is larger.
    pub max_input_bytes: Option<u64>,
    /// With a ledger: the tokens to lock in a credit line for each staked worker this node
    /// leases work to (0, the default: none). With lines open, jobs are paid from them and start
    /// without waiting for an escrow's block; lines are topped up when half spent.
    pub credit_per_worker: Option<u64>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::File { reason, .. } => ConfigError::File {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File {
            path: "<text>".into(),
            reason: e.to_string().replace('\n', " "),
        })
    }

    /// Overlays `other` on `self`: every field `other` sets wins.
    pub fn overlay(self, other: FileConfig) -> FileConfig {
        FileConfig {
            preset: other.preset.or(self.preset),
            data_dir: other.data_dir.or(self.data_dir),
            listen: other.listen.or(self.listen),
            bootstrap: other.bootstrap.or(self.bootstrap),
            static_peers: other.static_peers.or(self.static_peers),
            mdns: other.mdns.or(self.mdns),
            api: other.api.or(self.api),
            log_format: other.log_format.or(self.log_format),
            max_connections: other.max_connections.or(self.max_connections),
            executor_slots: other.executor_slots.or(self.executor_slots),
            price: other.price.or(self.price),
            ad_interval_secs: other.ad_interval_secs.or(self.ad_interval_secs),
            genesis: other.genesis.or(self.genesis),
            consensus_listen: other.consensus_listen.or(self.consensus_listen),
            consensus_peers: other.consensus_peers.or(self.consensus_peers),
            block_time_ms: other.block_time_ms.or(self.block_time_ms),
            authorization: other.authorization.or(self.authorization),
            allow_list: other.allow_list.or(self.allow_list),
            blob_quota_bytes: other.blob_quota_bytes.or(self.blob_quota_bytes),
            max_input_bytes: other.max_input_bytes.or(self.max_input_bytes),
            credit_per_worker: other.credit_per_worker.or(self.credit_per_worker),
        }
    }
}

/// The validated configuration the node runs with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The preset it started from.
    pub preset: Preset,
    /// Where state lives.
    pub data_dir: PathBuf,
    /// The network's configuration.
    pub net: agora_net::Config,
    /// The HTTP API's address.
    pub api: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// Concurrent executions.
    pub executor_slots: usize,
    /// Price per execution.
    pub price: u64,
    /// Time between capability ads and health beacons.
    pub ad_interval: Duration,
    /// Test only: return corrupted outputs (a Byzantine worker). Never set from a file.
    pub byzantine: bool,
    /// The ledger, when the node joins a network with a genesis file.
    pub ledger: Option<LedgerConfig>,
    /// The blob quota in bytes (see [`FileConfig::blob_quota_bytes`]).
    pub blob_quota_bytes: u64,
    /// The largest job input in bytes (see [`FileConfig::max_input_bytes`]).
    pub max_input_bytes: u64,
}

impl NodeConfig {
    /// The bounds a job spec must keep to on this node, as submitter and as worker: the
    /// defaults, with the input size capped at [`NodeConfig::max_input_bytes`].
    pub fn spec_bounds(&self) -> agora_types::job::SpecBounds {
        let bounds = agora_types::job::SpecBounds::default();
        agora_types::job::SpecBounds {
            max_input_bytes: self.max_input_bytes.min(bounds.max_input_bytes),
            ..bounds
        }
    }
}

/// How the node takes part in the ledger.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// The network's genesis.
    pub genesis: agora_ledger::Genesis,
    /// Where the consensus engine listens (port 0: a free port is picked at start).
    pub listen: SocketAddr,
    /// Consensus endpoints to dial (the genesis file's and the configured ones).
    pub peers: Vec<SocketAddr>,
    /// Target time between blocks.
    pub block_time: Duration,
    /// Tokens per credit line ([`FileConfig::credit_per_worker`]; 0: no lines).
    pub credit_per_worker: u64,
}

fn parse_socket(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::field(field, value, "IP:PORT, e.g. 127.0.0.1:7471"))
}

fn ledger_config(f: &FileConfig, preset: Preset) -> Result<Option<LedgerConfig>, ConfigError> {
    let Some(path) = &f.genesis else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let genesis = agora_ledger::Genesis::from_json(&text).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let listen_text = f.consensus_listen.clone().unwrap_or_else(|| match preset {
        Preset::Local => "127.0.0.1:0".into(),
        Preset::Production => "0.0.0.0:7471".into(),
    });
    let listen = parse_socket("consensus_listen", &listen_text)?;
    let mut peers = Vec::new();
    for (i, a) in genesis.consensus_addrs().iter().enumerate() {
        let addr: SocketAddr = a.parse().map_err(|_| ConfigError::File {
            path: path.display().to_string(),
            reason: format!("consensus address {a:?} (#{i}) is not IP:PORT"),
        })?;
        if addr != listen {
            peers.push(addr);
        }
    }
    for (i, a) in f.consensus_peers.iter().flatten().enumerate() {
        let addr = parse_socket(&format!("consensus_peers[{i}]"), a)?;
        if addr != listen && !peers.contains(&addr) {
            peers.push(addr);
        }
    }
    let block_ms = f.block_time_ms.unwrap_or(match preset {
        Preset::Local => 300,
        Preset::Production => 1_000,
    });
    if !(50..=60_000).contains(&block_ms) {
        return Err(ConfigError::field("block_time_ms", block_ms, "50..=60000"));
    }
    Ok(Some(LedgerConfig {
        genesis,
        listen,
        peers,
        block_time: Duration::from_millis(block_ms),
        credit_per_worker: f.credit_per_worker.unwrap_or(0),
    }))
}

/// The default data directory: `$XDG_DATA_HOME/agora` or `~/.local/share/agora`, else `./agora-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("agora");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/agora");
    }
    PathBuf::from("agora-data")
}

fn parse_addrs(field: &str, values: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.parse::<Multiaddr>().map_err(|e| {
                ConfigError::field(
                    format!("{field}[{i}]"),
                    v,
                    format!("a multiaddr such as /ip4/127.0.0.1/tcp/7470 ({e})"),
                )
            })
        })
        .collect()
}

impl NodeConfig {
    /// Validates a layered [`FileConfig`] into the configuration the node runs with.
    pub fn validate(f: FileConfig) -> Result<NodeConfig, ConfigError> {
        let preset = f.preset.unwrap_or_default();
        let mut net = match preset {
            Preset::Local => agora_net::Config::local(),
            Preset::Production => agora_net::Config::production(),
        };
        if let Some(l) = &f.listen {
            if l.is_empty() {
                return Err(ConfigError::field("listen", "[]", "at least one multiaddr"));
            }
            net.listen = parse_addrs("listen", l)?;
        }
        if let Some(b) = &f.bootstrap {
            net.bootstrap = parse_addrs("bootstrap", b)?;
        }
        if let Some(s) = &f.static_peers {
            net.static_peers = parse_addrs("static_peers", s)?;
        }
        // mDNS is on for `agora node` unless turned off (devnets and tests turn it off).
        net.mdns = f.mdns.unwrap_or(true);
        if let Some(m) = f.max_connections {
            if m == 0 || m > 100_000 {
                return Err(ConfigError::field("max_connections", m, "1..=100000"));
            }
            net.max_connections = m;
        }
        let api_text = f.api.clone().unwrap_or_else(|| "127.0.0.1:7460".into());
        let api: SocketAddr = api_text.parse().map_err(|_| {
            ConfigError::field(
                "api",
                &api_text,
                "HOST:PORT with an IP host, e.g. 127.0.0.1:7460",
            )
        })?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let executor_slots = match f.executor_slots {
            None | Some(0) => cores,
            Some(n) if n <= 1024 => n,
            Some(n) => {
                return Err(ConfigError::field(
                    "executor_slots",
                    n,
                    "0 (one per core) ..= 1024",
                ));
            }
        };
        let ad_secs = f.ad_interval_secs.unwrap_or(match preset {
            Preset::Local => 2,
            Preset::Production => 30,
        });
        if ad_secs == 0 || ad_secs > 3600 {
            return Err(ConfigError::field("ad_interval_secs", ad_secs, "1..=3600"));
        }
        net.authorization = match f.authorization.as_deref() {
            None | Some("open") => agora_net::Authorization::Open,
            Some("permissioned") => agora_net::Authorization::Permissioned,
            Some(other) => {
                return Err(ConfigError::field(
                    "authorization",
                    other,
                    "`open` or `permissioned`",
                ));
            }
        };
        for (i, p) in f.allow_list.iter().flatten().enumerate() {
            let peer = p.parse().map_err(|_| {
                ConfigError::field(format!("allow_list[{i}]"), p, "a peer id (`agora id`)")
            })?;
            net.allow_list.push(peer);
        }
        let ledger = ledger_config(&f, preset)?;
        let blob_quota_bytes = f.blob_quota_bytes.unwrap_or(match preset {
            Preset::Local => 1 << 30,
            Preset::Production => 10 << 30,
        });
        if blob_quota_bytes < 64 << 20 {
            return Err(ConfigError::field(
                "blob_quota_bytes",
                blob_quota_bytes,
                "at least 67108864 (64 MiB): one module and one input must fit",
            ));
        }
        let max_input_bytes = f.max_input_bytes.unwrap_or(64 << 20);
        let input_bound = agora_types::job::SpecBounds::default().max_input_bytes;
        if max_input_bytes > input_bound || max_input_bytes > blob_quota_bytes {
            return Err(ConfigError::field(
                "max_input_bytes",
                max_input_bytes,
                format!("at most {input_bound} and at most blob_quota_bytes"),
            ));
        }
        if net.authorization == agora_net::Authorization::Permissioned
            && ledger.is_none()
            && net.allow_list.is_empty()
        {
            return Err(ConfigError::field(
                "authorization",
                "permissioned",
                "a genesis file (the stake set decides) or a non-empty allow_list",
            ));
        }
        Ok(NodeConfig {
            ledger,
            preset,
            data_dir: f.data_dir.unwrap_or_else(default_data_dir),
            net,
            api,
            log_format: f.log_format.unwrap_or_default(),
            executor_slots,
            price: f.price.unwrap_or(10),
            ad_interval: Duration::from_secs(ad_secs),
            byzantine: false,
            blob_quota_bytes,
            max_input_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_multiaddr_names_itself() {
        let f = FileConfig {
            bootstrap: Some(vec!["/ip4/127.0.0.1/tcp/1".into(), "not-an-addr".into()]),
            ..Default::default()
        };
        let e = NodeConfig::validate(f).unwrap_err().to_string();
        assert!(e.contains("bootstrap[1]"), "{e}");
        assert!(e.contains("not-an-addr"), "{e}");
        assert!(e.contains("multiaddr"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn toml_layering_and_unknown_keys() {
        let base = FileConfig::parse("preset = \"production\"\nprice = 5\n").unwrap();
        let flags = FileConfig {
            price: Some(7),
            ..Default::default()
        };
        let c = NodeConfig::validate(base.overlay(flags)).unwrap();
        assert_eq!(c.price, 7);
        assert_eq!(c.preset, Preset::Production);
        assert!(c.net.mdns);
        let e = FileConfig::parse("prcie = 5").unwrap_err().to_string();
        assert!(e.contains("prcie"), "{e}");
    }

    #[test]
    fn blob_quota_and_input_limit() {
        let c = NodeConfig::validate(FileConfig::default()).unwrap();
        assert_eq!(c.blob_quota_bytes, 1 << 30);
        assert_eq!(c.spec_bounds().max_input_bytes, 64 << 20);
        let p =
            NodeConfig::validate(FileConfig::parse("preset = \"production\"").unwrap()).unwrap();
        assert_eq!(p.blob_quota_bytes, 10 << 30);
        let small = FileConfig::parse("max_input_bytes = 1000").unwrap();
        assert_eq!(
            NodeConfig::validate(small)
                .unwrap()
                .spec_bounds()
                .max_input_bytes,
            1000
        );
        let e = NodeConfig::validate(FileConfig::parse("blob_quota_bytes = 5").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("blob_quota_bytes"), "{e}");
    }

    #[test]
    fn bad_api_and_preset() {
        let f = FileConfig {
            api: Some("localhost".into()),
            ..Default::default()
        };
        assert!(
            NodeConfig::validate(f)
                .unwrap_err()
                .to_string()
                .contains("`api`")
        );
        assert!("prod".parse::<Preset>().is_err());
    }
}
