//! Fuzz target `storage_header`: runs `checks::storage_header` (see `fuzz/checks.rs`) on each input.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = checks::storage_header(data);
});
