//! Fuzz target `gossip_op`: runs `checks::gossip_op` (see `fuzz/checks.rs`) on each input.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = checks::gossip_op(data);
});
