//! Block payloads: `Block::decode` (bounded by `MAX_BLOCK_BYTES`), then what the chain
//! application does (crates/node/src/ledger.rs): refuse a wrong height or too many transactions,
//! apply it on a small fixed genesis. Then the block's transactions re-signed by the fixed keys,
//! one block per transaction (so unbonding and refunds mature), applied to two ledgers that must
//! agree on every receipt and state root: one with `apply_block`, the other with
//! `apply_block_with(|_| true)` (the node's path for transactions its mempool verified; every
//! re-signed transaction verifies, so the hint must not change the outcome). The supply must be
//! conserved after every block.
#![no_main]

use agora_fuzz::{check_ledger, ledger, resign_tx, round_trip};
use agora_types::ledger::{Block, MAX_BLOCK_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(block) = Block::decode(data) else {
        return;
    };
    round_trip(&block, data, MAX_BLOCK_BYTES);
    // As received, at height 1 (the node refuses other heights before applying).
    let mut l = ledger();
    let max = l.params().max_block_txs;
    let mut at1 = block.clone();
    at1.height = 1;
    match l.apply_block(&at1) {
        Ok(r) => {
            assert!(at1.txs.len() <= max);
            assert_eq!(r.receipts.len(), at1.txs.len());
            assert_eq!(r.state_root, l.state_root());
            assert_eq!(l.height(), 1);
        }
        Err(_) => assert!(at1.txs.len() > max),
    }
    check_ledger(&l);
    // A wrong height is refused and changes nothing.
    let root = l.state_root();
    assert!(l.apply_block(&at1).is_err(), "a block applied twice at one height");
    assert_eq!(root, l.state_root());
    // Re-signed, one transaction per block, on two replicas.
    let mut a = ledger();
    let mut b = ledger();
    for (i, tx) in block.txs.iter().take(max.min(16)).enumerate() {
        let blk = Block {
            height: i as u64 + 1,
            time_ms: block.time_ms.wrapping_add(i as u64),
            txs: vec![resign_tx(tx)],
        };
        let ra = a.apply_block(&blk).expect("the next height applies");
        let rb = b.apply_block_with(&blk, |_| true).expect("the next height applies");
        assert_eq!(ra, rb, "two replicas disagree");
        check_ledger(&a);
    }
});
