//! Durable state: a redb database for records, and a content-addressed blob directory.
//!
//! Records (jobs with their history, reputation) live in `agora.redb`; every write is one redb
//! transaction, committed before it is acknowledged, so a crash loses nothing that was
//! acknowledged. Blobs (modules, inputs, outputs) live as files named by their blake3 hash under
//! `blobs/`; a blob is hashed as it is written, written to a temporary file and renamed into place
//! only if the hash matches, so a partial or corrupted blob is never visible.
//!
//! # What it defends against
//!
//! - **A damaged database file** (truncated, overwritten, from another program): the file is
//!   checked when it is opened (redb's integrity check, and a full read of the records, with any
//!   panic inside redb caught); a damaged one is refused with [`StoreError::Corrupt`], which
//!   names the file and what to do. It is never silently replaced by an empty database.
//! - **A full disk**: a write that fails for lack of space answers [`StoreError::DiskFull`].
//!   redb latches an I/O failure (every later transaction would fail); the store then drops the
//!   handle and reopens the file on the next operation, so it recovers as soon as space returns.
//! - **Blobs filling the disk**: blobs are kept within a quota
//!   ([`StoreConfig::blob_quota_bytes`]). To make room, the least recently used blobs are
//!   evicted, never one that a job record still needs (the module, input and result outputs of
//!   a job not yet final, and the agreed output of a finished one). When everything left is
//!   needed, the write is refused with [`StoreError::QuotaExceeded`]. Temporary files of writes
//!   interrupted by a crash are removed at start.
//!
//! Everything here is blocking; the node calls it from `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use agora_market::JobRecord;
use agora_types::Hash;
use agora_types::job::Outcome;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tracing::{debug, info, warn};

const JOBS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("jobs");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// The database's file name inside the data directory.
pub const DB_FILE: &str = "agora.redb";

/// Storage errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// A file operation failed.
    #[error("blob store: {0}")]
    Io(io::Error),
    /// There is no space left on the disk that holds the data directory.
    #[error(
        "disk full: no space left to write {path}; free space on that disk (or move --data-dir \
         elsewhere) and retry"
    )]
    DiskFull {
        /// What could not be written.
        path: PathBuf,
    },
    /// The database file is damaged: the node refuses to start on it.
    #[error(
        "the database {path} is damaged ({reason}); restore it from a backup, or move it away \
         (e.g. `mv {path} {path}.damaged`) to start with an empty job store"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another process holds the database open.
    #[error(
        "the database {path} is in use by another process; is another node using the same --data-dir?"
    )]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The blob quota is full of blobs that jobs still need.
    #[error(
        "the blob store is full: {need} more bytes do not fit in the quota of {quota} bytes, and \
         the blobs held are still needed by jobs; raise `blob_quota_bytes` or wait for jobs to end"
    )]
    QuotaExceeded {
        /// The size of the blob that did not fit.
        need: u64,
        /// The quota.
        quota: u64,
    },
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

impl StoreError {
    /// The same error for another caller (one failed commit answers every submission in it):
    /// the kinds a caller acts on keep their variant, the others their message.
    pub(crate) fn for_another(&self) -> StoreError {
        match self {
            StoreError::DiskFull { path } => StoreError::DiskFull { path: path.clone() },
            StoreError::QuotaExceeded { need, quota } => StoreError::QuotaExceeded {
                need: *need,
                quota: *quota,
            },
            other => StoreError::Db(other.to_string()),
        }
    }

    /// Whether the error means the disk (or the blob quota) has no room: the API answers
    /// 507 Insufficient Storage.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::DiskFull { .. } | StoreError::QuotaExceeded { .. }
        )
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// Whether an I/O error means "no space left" (ENOSPC) or "quota exceeded" (EDQUOT).
fn no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// An I/O error while writing `path`, with "no space" told apart.
fn io_at(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| {
        if no_space(&e) {
            StoreError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            StoreError::Io(e)
        }
    }
}

/// A redb failure, classified; `true` when the handle must be reopened before it works again.
fn classify(path: &Path, e: impl Into<redb::Error>) -> (StoreError, bool) {
    match e.into() {
        redb::Error::Io(io) if no_space(&io) => (
            StoreError::DiskFull {
                path: path.to_path_buf(),
            },
            true,
        ),
        redb::Error::Io(io) => (StoreError::Db(io.to_string()), true),
        redb::Error::PreviousIo => (
            StoreError::Db("a previous write failed; reopening the database".into()),
            true,
        ),
        redb::Error::Corrupted(msg) => (StoreError::Db(format!("DB corrupted: {msg}")), true),
        e @ (redb::Error::DatabaseClosed
        | redb::Error::LockPoisoned(_)
        | redb::Error::TransactionPoisoned) => (StoreError::Db(e.to_string()), true),
        redb::Error::DatabaseAlreadyOpen => (
            StoreError::InUse {
                path: path.to_path_buf(),
            },
            false,
        ),
        other => (StoreError::Db(other.to_string()), false),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic inside redb".into())
}

/// Opens the database file, refusing a damaged one. Never panics.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        // redb would silently initialise an empty file as a new database.
        Ok(m) if m.len() == 0 => {
            return Err(corrupt(
                "the file is empty (0 bytes): it was truncated or never finished".into(),
            ));
        }
        Ok(m) if !m.is_file() => return Err(corrupt("it is not a regular file".into())),
        Ok(_) => {
            let mut magic = [0u8; 4];
            let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
            match read {
                Ok(()) if &magic == b"redb" => {}
                Ok(()) => return Err(corrupt("it is not a redb database file".into())),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(corrupt("the file is truncated".into()));
                }
                Err(e) => return Err(StoreError::Io(e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Io(e)),
    }
    let opened = catch_unwind(AssertUnwindSafe(|| -> Result<Database, StoreError> {
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(true);
        let db = builder.create(path).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(m)) => corrupt(m),
            redb::DatabaseError::UpgradeRequired(v) => corrupt(format!(
                "it is in redb file format {v}, which this version cannot read"
            )),
            redb::DatabaseError::RepairAborted => corrupt("it needs a repair that failed".into()),
            other => classify(path, other).0,
        })?;
        // Create the tables, then read every record once: damage past the header shows here.
        let tx = db.begin_write().map_err(|e| classify(path, e).0)?;
        tx.open_table(JOBS).map_err(|e| classify(path, e).0)?;
        tx.open_table(META).map_err(|e| classify(path, e).0)?;
        tx.commit().map_err(|e| classify(path, e).0)?;
        let read = || -> Result<(), redb::Error> {
            let tx = db.begin_read()?;
            for row in tx.open_table(JOBS)?.iter()? {
                row?;
            }
            for row in tx.open_table(META)?.iter()? {
                row?;
            }
            Ok(())
        };
        read().map_err(|e| match e {
            redb::Error::Corrupted(m) => corrupt(m),
            other => classify(path, other).0,
        })?;
        Ok(db)
    }));
    match opened {
        Ok(r) => r,
        Err(p) => Err(corrupt(format!("reading it failed: {}", panic_text(&*p)))),
    }
}

/// Storage settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The most bytes of blobs kept on disk; older unneeded blobs are evicted to stay below.
    pub blob_quota_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            blob_quota_bytes: 1 << 30,
        }
    }
}

/// Blobs on disk, with their last use, for the quota.
#[derive(Default)]
struct BlobIndex {
    /// Size and last-use tick of each blob.
    entries: HashMap<Hash, (u64, u64)>,
    /// Bytes of all entries, plus writes in progress.
    total: u64,
    tick: u64,
}

impl BlobIndex {
    fn touch(&mut self, hash: &Hash) {
        self.tick += 1;
        if let Some(e) = self.entries.get_mut(hash) {
            e.1 = self.tick;
        }
    }

    fn insert(&mut self, hash: Hash, size: u64) {
        self.tick += 1;
        if let Some(old) = self.entries.insert(hash, (size, self.tick)) {
            self.total = self.total.saturating_sub(old.0);
        }
        self.total += size;
    }

    fn remove(&mut self, hash: &Hash) {
        if let Some((size, _)) = self.entries.remove(hash) {
            self.total = self.total.saturating_sub(size);
        }
    }
}

struct Inner {
    db_path: PathBuf,
    /// `None` after a failure that redb latches; reopened on the next operation.
    db: Mutex<Option<Arc<Database>>>,
    blobs: PathBuf,
    config: StoreConfig,
    index: Mutex<BlobIndex>,
}

/// The node's storage; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Opens (or creates) the storage under `data_dir` with the default settings.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(data_dir, StoreConfig::default())
    }

    /// Opens (or creates) the storage under `data_dir`. Refuses a damaged database
    /// ([`StoreError::Corrupt`]); removes temporary files left by interrupted blob writes.
    pub fn open_with(data_dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(io_at(data_dir))?;
        let blobs = data_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
        let db_path = data_dir.join(DB_FILE);
        let db = open_db(&db_path)?;
        let index = scan_blobs(&blobs)?;
        let store = Store {
            inner: Arc::new(Inner {
                db_path,
                db: Mutex::new(Some(Arc::new(db))),
                blobs,
                config,
                index: Mutex::new(index),
            }),
        };
        Ok(store)
    }

    /// The handle, reopening the file if a failure closed it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = lock(&self.inner.db);
        if let Some(db) = &*slot {
            return Ok(db.clone());
        }
        let db = Arc::new(open_db(&self.inner.db_path)?);
        info!(path = %self.inner.db_path.display(), "database reopened after a write failure");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Forgets `db` (if it is still the current handle), so that the next operation reopens.
    fn invalidate(&self, db: &Arc<Database>) {
        let mut slot = lock(&self.inner.db);
        if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, db)) {
            *slot = None;
        }
    }

    /// Runs `f` on the database. A failure that leaves the handle unusable closes it; the
    /// operation is tried once more on a fresh handle (the failure may have been an earlier
    /// operation's, latched by redb).
    fn with_db<T>(&self, f: impl Fn(&Database) -> Result<T, redb::Error>) -> Result<T, StoreError> {
        let mut last = None;
        for _ in 0..2 {
            let db = self.db()?;
            match f(&db) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let (err, reopen) = classify(&self.inner.db_path, e);
                    if !reopen {
                        return Err(err);
                    }
                    warn!(path = %self.inner.db_path.display(), error = %err, "database write failed; it will be reopened");
                    self.invalidate(&db);
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Db("unknown failure".into())))
    }

    /// Writes one job record (already encoded).
    pub fn put_job(&self, id: &Hash, record: &[u8]) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(JOBS)?;
                t.insert(id.as_bytes(), record)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Writes (`Some`) or deletes (`None`) several job records in one transaction: one commit,
    /// one sync, however many records.
    pub fn write_jobs(&self, batch: &[(Hash, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(JOBS)?;
                for (id, record) in batch {
                    match record {
                        Some(r) => {
                            t.insert(id.as_bytes(), r.as_slice())?;
                        }
                        None => {
                            t.remove(id.as_bytes())?;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Removes a job record.
    pub fn delete_job(&self, id: &Hash) -> Result<(), StoreError> {
        self.write_jobs(&[(*id, None)])
    }

    /// Every job record.
    pub fn jobs(&self) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(JOBS)?;
            let mut out = vec![];
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((Hash(*k.value()), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Writes a metadata value.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(META)?;
                t.insert(key, value)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Reads a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(META)?;
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    fn blob_path(&self, hash: &Hash) -> PathBuf {
        self.inner.blobs.join(hash.to_hex())
    }

    /// The blob quota in bytes.
    pub fn blob_quota(&self) -> u64 {
        self.inner.config.blob_quota_bytes
    }

    /// Bytes of blobs on disk (as far as this store wrote or found them).
    pub fn blob_bytes(&self) -> u64 {
        lock(&self.inner.index).total
    }

    /// Stores `data`, returning its hash. Storing the same bytes twice is a no-op.
    pub fn put_blob(&self, data: &[u8]) -> Result<Hash, StoreError> {
        let hash = Hash::of(data);
        self.put_blob_as(hash, data)?;
        Ok(hash)
    }

    /// Stores `data` under `expected`, refusing it if the hash differs. Makes room within the
    /// quota first (see the module docs).
    pub fn put_blob_as(&self, expected: Hash, data: &[u8]) -> Result<(), StoreError> {
        let actual = Hash::of(data);
        if actual != expected {
            return Err(StoreError::HashMismatch { expected, actual });
        }
        let path = self.blob_path(&expected);
        if path.exists() {
            lock(&self.inner.index).touch(&expected);
            return Ok(());
        }
        let size = data.len() as u64;
        self.reserve(size)?;
        let written = self.write_file(&expected, &path, data);
        let mut index = lock(&self.inner.index);
        index.total = index.total.saturating_sub(size);
        written?;
        index.insert(expected, size);
        Ok(())
    }

    /// A fresh path in the blob directory for an upload to be written to before
    /// [`Store::put_blob_file`] takes it over. Left over after a crash, it is removed at start.
    pub fn blob_temp_path(&self) -> PathBuf {
        self.inner
            .blobs
            .join(format!(".upload.{:016x}.tmp", rand::random::<u64>()))
    }

    /// Stores the (written and synced) file `tmp` as a blob, hashing it from disk, within the
    /// quota; returns its hash and size. `tmp` is gone afterwards, whatever happens.
    pub fn put_blob_file(&self, tmp: &Path) -> Result<(Hash, u64), StoreError> {
        let result = self.adopt_file(tmp);
        if result.is_err() || tmp.exists() {
            let _ = std::fs::remove_file(tmp);
        }
        result
    }

    fn adopt_file(&self, tmp: &Path) -> Result<(Hash, u64), StoreError> {
        let mut f = std::fs::File::open(tmp)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        drop(f);
        let hash = Hash(*hasher.finalize().as_bytes());
        let path = self.blob_path(&hash);
        if path.exists() {
            lock(&self.inner.index).touch(&hash);
            return Ok((hash, size));
        }
        self.reserve(size)?;
        let renamed = std::fs::rename(tmp, &path).map_err(io_at(&path));
        let mut index = lock(&self.inner.index);
        index.total = index.total.saturating_sub(size);
        renamed?;
        index.insert(hash, size);
        Ok((hash, size))
    }

    /// Writes `data` to a temporary file and renames it to `path`; the temporary file is removed
    /// on failure.
    fn write_file(&self, hash: &Hash, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let tmp =
            self.inner
                .blobs
                .join(format!(".{}.{}.tmp", hash.to_hex(), rand::random::<u32>()));
        let write = || -> io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_at(path)(e)
        })
    }

    /// Counts `size` bytes against the quota, evicting least recently used blobs that no job
    /// needs until they fit.
    fn reserve(&self, size: u64) -> Result<(), StoreError> {
        let quota = self.inner.config.blob_quota_bytes;
        let refused = StoreError::QuotaExceeded { need: size, quota };
        if size > quota {
            return Err(refused);
        }
        let mut index = lock(&self.inner.index);
        if index.total + size <= quota {
            index.total += size;
            return Ok(());
        }
        // Over the quota: find what may go. Reading the records is done only here.
        let needed = self.needed_blobs()?;
        let mut candidates: Vec<(u64, Hash, u64)> = index
            .entries
            .iter()
            .filter(|(h, _)| !needed.contains(h))
            .map(|(h, (s, used))| (*used, *h, *s))
            .collect();
        candidates.sort();
        let mut freed = 0;
        let mut evict = vec![];
        for (_, h, s) in candidates {
            if index.total - freed + size <= quota {
                break;
            }
            freed += s;
            evict.push(h);
        }
        if index.total - freed + size > quota {
            return Err(refused);
        }
        for h in &evict {
            match std::fs::remove_file(self.blob_path(h)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(blob = %h.short(), error = %e, "cannot evict a blob");
                    continue;
                }
            }
            index.remove(h);
        }
        info!(
            evicted = evict.len(),
            freed, quota, "blobs evicted to stay within the quota"
        );
        if index.total + size > quota {
            return Err(refused);
        }
        index.total += size;
        Ok(())
    }

    /// Blobs that job records still need: the module, input and result outputs of every job
    /// not yet final, and the agreed output of every finished one.
    pub fn needed_blobs(&self) -> Result<HashSet<Hash>, StoreError> {
        let mut needed = HashSet::new();
        for (id, bytes) in self.jobs()? {
            let record: JobRecord = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    warn!(job = %id.short(), error = %e, "unreadable job record; its blobs are not protected");
                    continue;
                }
            };
            if let Some(Outcome::Completed { output_hash, .. }) = &record.outcome {
                needed.insert(*output_hash);
            }
            if !record.state.is_final() {
                needed.insert(record.job.payload.module);
                needed.insert(record.job.payload.input);
                for r in &record.results {
                    if let Outcome::Completed { output_hash, .. } = &r.outcome {
                        needed.insert(*output_hash);
                    }
                }
            }
        }
        Ok(needed)
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
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
            lock(&self.inner.index).remove(hash);
            return Err(StoreError::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        lock(&self.inner.index).touch(hash);
        mark_used(&f);
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let total = f.metadata()?.len();
        let start = offset.min(total);
        f.seek(SeekFrom::Start(start))?;
        let want = (len as u64).min(total - start) as usize;
        let mut buf = vec![0u8; want];
        f.read_exact(&mut buf)?;
        lock(&self.inner.index).touch(hash);
        if start == 0 {
            // The first chunk of a transfer marks the use; later chunks need not.
            mark_used(&f);
        }
        Ok(Some((total, buf)))
    }
}

/// Records a use of a blob in its file's modification time, which [`scan_blobs`] reads as the
/// use order after a restart (so a blob read often is not evicted first after one). Best
/// effort: where the time cannot be set, only this run's order knows of the use.
fn mark_used(f: &std::fs::File) {
    if let Err(e) = f.set_modified(std::time::SystemTime::now()) {
        debug!(error = %e, "cannot record a blob's use in its modification time");
    }
}

/// Lists the blobs under `dir` (oldest modification first, as the initial use order) and removes
/// the temporary files of interrupted writes.
fn scan_blobs(dir: &Path) -> Result<BlobIndex, StoreError> {
    let mut found = vec![];
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    warn!(file = %entry.path().display(), error = %e, "cannot remove a temporary file")
                }
            }
            continue;
        }
        let Ok(hash) = name.parse::<Hash>() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().ok();
        found.push((modified, hash, meta.len()));
    }
    if removed > 0 {
        info!(removed, dir = %dir.display(), "removed temporary files of interrupted blob writes");
    }
    found.sort();
    let mut index = BlobIndex::default();
    for (_, hash, size) in found {
        index.insert(hash, size);
    }
    Ok(index)
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

    #[test]
    fn temp_files_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let keep = {
            let s = Store::open(dir.path()).unwrap();
            s.put_blob(b"kept").unwrap()
        };
        let blobs = dir.path().join("blobs");
        let tmp = blobs.join(format!(".{}.1234.tmp", Hash::of(b"lost").to_hex()));
        std::fs::write(&tmp, b"half a blob").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(!tmp.exists(), "the temporary file survived a restart");
        assert!(s.has_blob(&keep));
        assert_eq!(s.blob_bytes(), 4);
    }

    fn record(module: Hash, input: Hash, final_output: Option<Hash>) -> Vec<u8> {
        use agora_types::job::{JobLimits, JobSpec, job_id};
        use agora_types::sign::Signed;
        let spec = JobSpec {
            module,
            module_size: 1,
            input,
            input_size: 1,
            args: vec![],
            limits: JobLimits::default(),
            capabilities: vec!["wasm".into()],
            redundancy: 1,
            max_price: 1,
            deadline_ms: 0,
            nonce: rand::random(),
            credit: false,
            runtime: Default::default(),
        };
        let key = agora_net::Keypair::generate_ed25519();
        let signed = Signed::sign(&key, spec, 1).unwrap();
        let mut rec = JobRecord::new(job_id(&signed), signed, 1, 1);
        if let Some(out) = final_output {
            rec.state = agora_market::JobState::Verified;
            rec.outcome = Some(Outcome::Completed {
                exit_code: 0,
                output_hash: out,
                fuel_used: 1,
                compared: None,
            });
        }
        serde_json::to_vec(&rec).unwrap()
    }

    #[test]
    fn quota_evicts_least_recently_used_unneeded_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_with(
            dir.path(),
            StoreConfig {
                blob_quota_bytes: 1000,
            },
        )
        .unwrap();
        let blob = |b: u8| vec![b; 200];
        let module = s.put_blob(&blob(1)).unwrap();
        let input = s.put_blob(&blob(2)).unwrap();
        let output = s.put_blob(&blob(3)).unwrap();
        let old = s.put_blob(&blob(4)).unwrap();
        let recent = s.put_blob(&blob(5)).unwrap();
        // A running job needs the module and input; a finished one keeps its output.
        s.put_job(&Hash::of(b"a"), &record(module, input, None))
            .unwrap();
        s.put_job(&Hash::of(b"b"), &record(old, old, Some(output)))
            .unwrap();
        // `old` was used before `recent`, and is not needed by a job that is not final.
        s.get_blob(&recent, u64::MAX).unwrap();
        assert_eq!(s.blob_bytes(), 1000);
        let new = s.put_blob(&blob(6)).unwrap();
        assert!(
            !s.has_blob(&old),
            "the least recently used unneeded blob stays"
        );
        for h in [module, input, output, recent, new] {
            assert!(s.has_blob(&h), "a blob that should stay was evicted");
        }
        assert_eq!(s.blob_bytes(), 1000);
        // Next goes `recent`, then `new`: least recently used first.
        let seventh = s.put_blob(&blob(7)).unwrap();
        assert!(!s.has_blob(&recent) && s.has_blob(&new));
        let eighth = s.put_blob(&blob(8)).unwrap();
        assert!(!s.has_blob(&new));
        for h in [module, input, output, seventh, eighth] {
            assert!(s.has_blob(&h), "a blob that should stay was evicted");
        }
        // Restarting keeps the accounting.
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.blob_bytes(), 1000);
    }

    #[test]
    fn use_order_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            blob_quota_bytes: 600,
        };
        let s = Store::open_with(dir.path(), config).unwrap();
        let pause = || std::thread::sleep(std::time::Duration::from_millis(20));
        let first = s.put_blob(&[1; 200]).unwrap();
        pause();
        let second = s.put_blob(&[2; 200]).unwrap();
        pause();
        let third = s.put_blob(&[3; 200]).unwrap();
        pause();
        // `first` is written first but read last; `second` is the least recently used.
        s.read_blob_range(&first, 0, 16).unwrap().unwrap();
        drop(s);
        let s = Store::open_with(dir.path(), config).unwrap();
        s.put_blob(&[4; 200]).unwrap();
        assert!(!s.has_blob(&second), "the least recently used blob stays");
        assert!(
            s.has_blob(&first) && s.has_blob(&third),
            "a blob used after the restart's scan order was evicted"
        );
    }

    #[test]
    fn uploaded_files_are_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let tmp = s.blob_temp_path();
        std::fs::write(&tmp, b"streamed upload").unwrap();
        let (h, size) = s.put_blob_file(&tmp).unwrap();
        assert_eq!((h, size), (Hash::of(b"streamed upload"), 15));
        assert!(!tmp.exists());
        assert_eq!(s.get_blob(&h, 100).unwrap().unwrap(), b"streamed upload");
        // A left-over upload is a temporary file: removed at the next start.
        let left = s.blob_temp_path();
        std::fs::write(&left, b"cut off").unwrap();
        drop(s);
        Store::open(dir.path()).unwrap();
        assert!(!left.exists());
    }

    #[test]
    fn quota_refuses_when_everything_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_with(
            dir.path(),
            StoreConfig {
                blob_quota_bytes: 500,
            },
        )
        .unwrap();
        let module = s.put_blob(&[1; 200]).unwrap();
        let input = s.put_blob(&[2; 200]).unwrap();
        s.put_job(&Hash::of(b"a"), &record(module, input, None))
            .unwrap();
        let e = s.put_blob(&[3; 200]).unwrap_err();
        assert!(e.is_disk_full(), "{e}");
        assert!(e.to_string().contains("blob_quota_bytes"), "{e}");
        assert!(matches!(
            s.put_blob(&[4; 600]),
            Err(StoreError::QuotaExceeded { .. })
        ));
        assert!(s.has_blob(&module) && s.has_blob(&input));
        let tmps = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(tmps, 0);
    }

    #[test]
    fn damaged_database_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for i in 0..50u32 {
                s.put_job(&Hash::of(&i.to_le_bytes()), &[7; 300]).unwrap();
            }
        }
        let path = dir.path().join(DB_FILE);
        let good = std::fs::read(&path).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("truncated to 3 bytes", good[..3].to_vec()),
            ("truncated to half", good[..good.len() / 2].to_vec()),
            ("truncated to 4 KiB", good[..4096.min(good.len())].to_vec()),
            (
                "random",
                (0..good.len()).map(|_| rand::random::<u8>()).collect(),
            ),
            ("random body", {
                let mut b = good.clone();
                for x in b.iter_mut().skip(4096) {
                    *x = rand::random();
                }
                b
            }),
        ];
        for (name, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            match Store::open(dir.path()) {
                Err(e @ StoreError::Corrupt { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(&path.display().to_string()), "{name}: {text}");
                    assert!(text.contains("backup"), "{name}: {text}");
                }
                Err(e) => panic!("{name}: not reported as damaged: {e}"),
                Ok(s) => {
                    // Anything that opens must still hold every record.
                    let n = s.jobs().map(|j| j.len()).unwrap_or(0);
                    assert_eq!(n, 50, "{name}: opened with {n} of 50 records, silently");
                }
            }
        }
    }
}
