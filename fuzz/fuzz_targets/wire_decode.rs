//! Fuzz target `wire_decode`: runs `checks::wire_decode` (see `fuzz/checks.rs`) on each input.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = checks::wire_decode(data);
});
