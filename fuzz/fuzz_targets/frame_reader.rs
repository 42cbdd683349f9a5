//! Fuzz target `frame_reader`: runs `checks::frame_reader` (see `fuzz/checks.rs`) on each input.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = checks::frame_reader(data);
});
