//! Ledger transactions: `decode_tx` (bounded by `MAX_TX_BYTES`), then precheck, mempool insert
//! and `apply_tx` on a small fixed genesis, as received; then the same transaction re-signed by
//! the fixed keys (so the rules behind the signature check are reached), applied at heights 1
//! and 2 (the replay must fail). The supply must be conserved after every step.
#![no_main]

use agora_fuzz::{check_ledger, check_signed, ledger, mempool_and_apply, resign_tx, round_trip};
use agora_types::ledger::{MAX_TX_BYTES, decode_tx, tx_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tx) = decode_tx(data) else {
        return;
    };
    round_trip(&tx, data, MAX_TX_BYTES);
    check_signed(&tx);
    let _ = tx_id(&tx);
    // As received.
    mempool_and_apply(&tx, ledger(), 1);
    // Re-signed: the ledger's rules proper.
    let signed = resign_tx(&tx);
    let mut l = mempool_and_apply(&signed, ledger(), 1);
    let before = l.state_root();
    let nonce_after = l.account(&agora_types::ledger::AccountId(signed.signer)).map(|a| a.nonce);
    if nonce_after.is_some_and(|n| n > signed.payload.nonce) {
        assert!(l.apply_tx(&signed, 2).is_err(), "a replayed transaction was applied");
        assert_eq!(before, l.state_root(), "a refused replay changed the state");
    }
    check_ledger(&l);
});
