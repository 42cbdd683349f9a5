//! Fuzz target `storage_rows`: runs `checks::storage_rows` (see `fuzz/checks.rs`) on each input.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::storage_rows(data);
});
