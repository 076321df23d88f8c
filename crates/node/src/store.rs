//! Durable state: a redb database for records, and a content-addressed blob directory.
//!
//! Records (jobs with their history, reputation) live in `agora.redb`; every write is one redb
//! transaction, committed before it is acknowledged, so a crash loses nothing that was
//! acknowledged. Blobs (modules, inputs, outputs) live as files named by their blake3 hash under
//! `blobs/`; a blob is hashed as it is written, written to a temporary file and renamed into place
//! only if the hash matches, so a partial or corrupted blob is never visible.
//!
//! Everything here is blocking; the node calls it from `spawn_blocking`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agora_types::Hash;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const JOBS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("jobs");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// Storage errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// A file operation failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    /// A blob's content does not match the hash it was stored or asked under.
    #[error("blob hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// The hash it should have.
        expected: Hash,
        /// The hash it has.
        actual: Hash,
    },
    /// A blob is larger than allowed.
    #[error("blob of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
    },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The node's storage; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    blobs: PathBuf,
}

impl Store {
    /// Opens (or creates) the storage under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let blobs = data_dir.join("blobs");
        std::fs::create_dir_all(&blobs)?;
        let db = Database::create(data_dir.join("agora.redb")).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(JOBS).map_err(db_err)?;
        tx.open_table(META).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Store {
            db: Arc::new(db),
            blobs,
        })
    }

    /// Writes one job record (already encoded).
    pub fn put_job(&self, id: &Hash, record: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(JOBS).map_err(db_err)?;
            t.insert(id.as_bytes(), record).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Writes (`Some`) or deletes (`None`) several job records in one transaction: one commit,
    /// one sync, however many records.
    pub fn write_jobs(&self, batch: &[(Hash, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(JOBS).map_err(db_err)?;
            for (id, record) in batch {
                match record {
                    Some(r) => {
                        t.insert(id.as_bytes(), r.as_slice()).map_err(db_err)?;
                    }
                    None => {
                        t.remove(id.as_bytes()).map_err(db_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Removes a job record.
    pub fn delete_job(&self, id: &Hash) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(JOBS).map_err(db_err)?;
            t.remove(id.as_bytes()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Every job record.
    pub fn jobs(&self) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(JOBS).map_err(db_err)?;
        let mut out = vec![];
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((Hash(*k.value()), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes a metadata value.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(META).map_err(db_err)?;
            t.insert(key, value).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Reads a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(META).map_err(db_err)?;
        Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    fn blob_path(&self, hash: &Hash) -> PathBuf {
        self.blobs.join(hash.to_hex())
    }

    /// Stores `data`, returning its hash. Storing the same bytes twice is a no-op.
    pub fn put_blob(&self, data: &[u8]) -> Result<Hash, StoreError> {
        let hash = Hash::of(data);
        self.put_blob_as(hash, data)?;
        Ok(hash)
    }

    /// Stores `data` under `expected`, refusing it if the hash differs.
    pub fn put_blob_as(&self, expected: Hash, data: &[u8]) -> Result<(), StoreError> {
        let actual = Hash::of(data);
        if actual != expected {
            return Err(StoreError::HashMismatch { expected, actual });
        }
        let path = self.blob_path(&expected);
        if path.exists() {
            return Ok(());
        }
        let tmp = self.blobs.join(format!(
            ".{}.{}.tmp",
            expected.to_hex(),
            rand::random::<u32>()
        ));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Whether the blob is here.
    pub fn has_blob(&self, hash: &Hash) -> bool {
        self.blob_path(hash).exists()
    }

    /// The blob's size, if present.
    pub fn blob_size(&self, hash: &Hash) -> Option<u64> {
        std::fs::metadata(self.blob_path(hash))
            .ok()
            .map(|m| m.len())
    }

    /// The whole blob, if present and no larger than `limit`; verified against its hash.
    pub fn get_blob(&self, hash: &Hash, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.blob_path(hash);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = f.metadata()?.len();
        if len > limit {
            return Err(StoreError::TooLarge { len, limit });
        }
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf)?;
        let actual = Hash::of(&buf);
        if actual != *hash {
            // A corrupted file on disk: remove it so it can be fetched again.
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        Ok(Some(buf))
    }

    /// Up to `len` bytes of a blob from `offset`, and the blob's total size.
    pub fn read_blob_range(
        &self,
        hash: &Hash,
        offset: u64,
        len: u32,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let mut f = match std::fs::File::open(self.blob_path(hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let total = f.metadata()?.len();
        let start = offset.min(total);
        f.seek(SeekFrom::Start(start))?;
        let want = (len as u64).min(total - start) as usize;
        let mut buf = vec![0u8; want];
        f.read_exact(&mut buf)?;
        Ok(Some((total, buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_ranged() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let h = s.put_blob(b"hello world").unwrap();
        assert!(s.has_blob(&h));
        assert_eq!(s.get_blob(&h, 100).unwrap().unwrap(), b"hello world");
        assert!(matches!(
            s.get_blob(&h, 3),
            Err(StoreError::TooLarge { .. })
        ));
        let (total, part) = s.read_blob_range(&h, 6, 100).unwrap().unwrap();
        assert_eq!((total, part.as_slice()), (11, &b"world"[..]));
        assert!(matches!(
            s.put_blob_as(Hash::of(b"x"), b"y"),
            Err(StoreError::HashMismatch { .. })
        ));
        // Corruption on disk is detected.
        std::fs::write(dir.path().join("blobs").join(h.to_hex()), b"tampered").unwrap();
        assert!(matches!(
            s.get_blob(&h, 100),
            Err(StoreError::HashMismatch { .. })
        ));
        assert!(!s.has_blob(&h));
    }

    #[test]
    fn jobs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = Hash::of(b"job");
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_job(&id, b"record").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.jobs().unwrap(), vec![(id, b"record".to_vec())]);
    }
}
