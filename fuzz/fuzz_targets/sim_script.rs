//! The ordering-script parser (sim/).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = amdvi_sim::script::parse("fuzz.amdvi", text);
    }
});
