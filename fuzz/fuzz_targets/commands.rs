//! Command-buffer decode and execution on arbitrary guest memory. Input:
//! 8 bytes of device-table register, 8 of control register, one byte of
//! command count, the commands (16 bytes each), then guest memory.
#![no_main]

use iommu_dev::{Iommu, IommuConfig};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use vm_memory::GuestMemoryAtomic;

#[path = "common.rs"]
mod common;

/// Where the commands are said to sit (ILLEGAL_COMMAND_ERROR reports it).
const CMD_GPA: u64 = 0xc000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let devtab = common::u64_at(data, 0);
    let control = common::u64_at(data, 8);
    let n = usize::from(data[16] % 33);
    let cmds: Vec<(u64, [u8; 16])> = data[17..]
        .chunks_exact(16)
        .take(n)
        .enumerate()
        .map(|(i, c)| (CMD_GPA + 16 * i as u64, c.try_into().unwrap()))
        .collect();
    let image = &data[(17 + 16 * cmds.len()).min(data.len())..];
    let cfg = IommuConfig {
        pri_timeout: Duration::from_millis(1),
        ..IommuConfig::default()
    };
    let iommu = Iommu::new(cfg, GuestMemoryAtomic::new(common::guest_memory(image)));
    let _ = iommu.set_device_table(devtab, control);
    let r = iommu.execute(&cmds);
    let _ = r;
    // Decoding alone agrees with execution about what is legal: a command
    // that decodes is re-encoded to the same bytes' meaning.
    for (_, raw) in &cmds {
        if let Ok(c) = iommu_dev::Command::decode(raw) {
            assert_eq!(iommu_dev::Command::decode(&c.encode()).ok(), Some(c));
        }
    }
});
