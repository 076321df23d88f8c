//! The chain's redb file: decided blocks with their certificates, and undecided proposals.
//!
//! * `blocks`: height -> [`BlockRecord`] (payload, proposer time, certificate, state root).
//!   Written in one transaction per decided height, committed (fsync) before the engine is told
//!   the decision is applied and before `Committed` is announced.
//! * `undecided`: (height, round, block hash) -> [`UndecidedRecord`]. Every proposal this node
//!   built or fully received, so that after a crash the WAL's references to proposed values can be
//!   answered (`StartedRound`) and a decided hash can be turned back into its payload. Pruned up
//!   to each decided height.
//!
//! redb calls block; they run on the chain task, which does nothing else meanwhile.

use std::path::Path;

use borsh::{BorshDeserialize, BorshSerialize};
use malachitebft_core_types::Round;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::ChainError;
use crate::context::{Address, Block, BlockHash};

const BLOCKS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("blocks");
const UNDECIDED: TableDefinition<'_, (u64, u32, [u8; 32]), &[u8]> =
    TableDefinition::new("undecided");

/// A decided block as stored.
#[derive(Clone, Debug, BorshSerialize, BorshDeserialize)]
pub struct BlockRecord {
    pub time_ms: u64,
    pub payload: Vec<u8>,
    /// The extended commit certificate, encoded by [`crate::codec::encode_certificate`].
    pub certificate: Vec<u8>,
    pub state_root: [u8; 32],
}

/// A proposal seen at some height and round.
#[derive(Clone, Debug, BorshSerialize, BorshDeserialize)]
pub struct UndecidedRecord {
    pub round: Round,
    pub valid_round: Round,
    pub proposer: Address,
    pub valid: bool,
    pub block: Block,
}

fn db_err(e: impl Into<redb::Error>) -> ChainError {
    ChainError::Storage(e.into())
}

fn decode<T: BorshDeserialize>(bytes: &[u8]) -> Result<T, ChainError> {
    borsh::from_slice(bytes).map_err(|e| ChainError::Corrupt(e.to_string()))
}

fn encode<T: BorshSerialize>(value: &T) -> Result<Vec<u8>, ChainError> {
    borsh::to_vec(value).map_err(|e| ChainError::Corrupt(e.to_string()))
}

/// The chain's database.
pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, ChainError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(BLOCKS).map_err(db_err)?;
        tx.open_table(UNDECIDED).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    /// Lowest and highest decided heights, if any.
    pub fn height_range(&self) -> Result<Option<(u64, u64)>, ChainError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(BLOCKS).map_err(db_err)?;
        let first = table.first().map_err(db_err)?.map(|(k, _)| k.value());
        let last = table.last().map_err(db_err)?.map(|(k, _)| k.value());
        Ok(first.zip(last))
    }

    pub fn block(&self, height: u64) -> Result<Option<BlockRecord>, ChainError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(BLOCKS).map_err(db_err)?;
        match table.get(height).map_err(db_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Durably store a decided block and drop undecided proposals up to its height.
    pub fn put_decided(&self, height: u64, record: &BlockRecord) -> Result<(), ChainError> {
        let bytes = encode(record)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut blocks = tx.open_table(BLOCKS).map_err(db_err)?;
            blocks.insert(height, bytes.as_slice()).map_err(db_err)?;
            let mut undecided = tx.open_table(UNDECIDED).map_err(db_err)?;
            undecided
                .retain_in((0, 0, [0; 32])..=(height, u32::MAX, [0xff; 32]), |_, _| {
                    false
                })
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    pub fn put_undecided(&self, height: u64, record: &UndecidedRecord) -> Result<(), ChainError> {
        let round = record.round.as_u32().unwrap_or(0);
        let key = (height, round, record.block.hash().0);
        let bytes = encode(record)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut undecided = tx.open_table(UNDECIDED).map_err(db_err)?;
            undecided.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    fn undecided_where(
        &self,
        height: u64,
        rounds: std::ops::RangeInclusive<u32>,
        mut keep: impl FnMut(&BlockHash) -> bool,
    ) -> Result<Vec<UndecidedRecord>, ChainError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(UNDECIDED).map_err(db_err)?;
        let range = (height, *rounds.start(), [0; 32])..=(height, *rounds.end(), [0xff; 32]);
        let mut out = Vec::new();
        for entry in table.range(range).map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            if keep(&BlockHash(key.value().2)) {
                out.push(decode(value.value())?);
            }
        }
        Ok(out)
    }

    /// The proposal with this hash at this height, from any round.
    pub fn undecided_by_hash(
        &self,
        height: u64,
        hash: &BlockHash,
    ) -> Result<Option<UndecidedRecord>, ChainError> {
        Ok(self
            .undecided_where(height, 0..=u32::MAX, |h| h == hash)?
            .into_iter()
            .next())
    }

    /// All proposals seen at this height and round.
    pub fn undecided_at(
        &self,
        height: u64,
        round: u32,
    ) -> Result<Vec<UndecidedRecord>, ChainError> {
        self.undecided_where(height, round..=round, |_| true)
    }
}
