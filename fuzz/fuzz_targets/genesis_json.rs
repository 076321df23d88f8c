//! Genesis files (`Genesis::from_json`; a node reads one it may have been handed by others).
//! A genesis that parses must build a ledger whose books balance, must survive `to_json` and
//! parse back equal.
#![no_main]

use agora_ledger::{Genesis, Ledger};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(g) = Genesis::from_json(text) else {
        return;
    };
    let again = Genesis::from_json(&g.to_json()).expect("to_json of a valid genesis parses");
    assert_eq!(again, g, "genesis JSON round trip");
    let _ = g.consensus_addrs();
    let l = Ledger::from_genesis(&g).expect("a checked genesis builds a ledger");
    assert!(l.supply_conserved());
    assert!(!l.validators().is_empty(), "a checked genesis has validators");
    assert_eq!(l.height(), 0);
    let _ = l.state_root();
});
