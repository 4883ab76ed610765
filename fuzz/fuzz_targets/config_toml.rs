//! The daemon's TOML configuration: any text is a configuration or one
//! `ConfigError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_device_amdvi::DaemonConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = DaemonConfig::from_toml("fuzz.toml", text) {
            // The message is one line naming the file.
            let m = e.to_string();
            assert!(m.starts_with("fuzz.toml: "), "{m}");
        }
    }
});
