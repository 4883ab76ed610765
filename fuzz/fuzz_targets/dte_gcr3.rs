//! DTE decode and the GCR3 lookup on arbitrary tables: input = 32 bytes of
//! DTE, one byte of flags (GATS, EPHEn), 4 bytes of PASID, then guest memory.
#![no_main]

use iommu_dev::dte::gcr3_lookup;
use iommu_dev::Dte;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 37 {
        return;
    }
    let dte = Dte([
        common::u64_at(data, 0),
        common::u64_at(data, 8),
        common::u64_at(data, 16),
        common::u64_at(data, 24),
    ]);
    let flags = data[32];
    let pasid = u32::from_le_bytes([data[33], data[34], data[35], data[36]]);
    let mem = common::guest_memory(&data[37..]);
    if let Ok(info) = dte.decode(flags & 1 != 0, flags & 2 != 0) {
        // GLX is only checked (and only used) with V=TV=1 (docs/amd-iommu.md §1).
        if info.v && info.tv && info.gv {
            assert!(info.glx <= 1, "GLX beyond 2 levels decoded: {info:?}");
        }
        let _ = gcr3_lookup(&mem, info.gcr3_root, info.glx, pasid & 0xffff);
    }
    // The lookup on any root and depth never panics either.
    let _ = gcr3_lookup(&mem, common::u64_at(data, 8), flags >> 7, pasid);
});
