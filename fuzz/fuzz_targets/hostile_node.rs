//! Fuzz target `hostile_node`: runs `checks::hostile_node` (see `fuzz/checks.rs`) on each
//! input: a simulated hostile node whose every message the input decides, beside honest ones.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::hostile_node(data);
});
