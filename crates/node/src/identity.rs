//! The node's Ed25519 identity, kept in the data directory.
//!
//! Created on first start (or by `agora init`) as `identity.key`, file mode 0600, and reused on
//! every later start, so a node keeps its peer id across restarts.

use std::io::Write;
use std::path::{Path, PathBuf};

use agora_net::Keypair;

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("identity key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold an Ed25519 key.
    #[error(
        "identity key {path} is corrupt or not an Ed25519 key ({reason}); move it away to create a new identity"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The key file's path inside a data directory.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.key")
}

/// Loads the identity from `data_dir`, creating it (and the directory) if absent. Returns the key
/// and whether it was just created.
pub fn load_or_create(data_dir: &Path) -> Result<(Keypair, bool), IdentityError> {
    let path = key_path(data_dir);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let key =
                Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if key.clone().try_into_ed25519().is_err() {
                return Err(IdentityError::Corrupt {
                    path,
                    reason: "not Ed25519".into(),
                });
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| IdentityError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let tmp = path.with_extension("key.tmp");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok((key, true))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        let (b, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(key_path(dir.path()), b"garbage").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
