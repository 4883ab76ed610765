//! Set-up shared by the criterion benches (`benches/iommu.rs`) and the
//! instruction counts of `make bench-stable` (`examples/bench_stable.rs`):
//! the same tables, caches and IOMMU for both.

#![allow(dead_code)]

use iommu_dev::ats::{Atc, AtsCompletion};
use iommu_dev::cache::{Iotlb, Tag, TlbEntry};
use iommu_dev::dte::GCR3_VALID;
use iommu_dev::mem::{self, Mem};
use iommu_dev::pgtable::Tables;
use iommu_dev::walker::{Perms, Request};
use iommu_dev::{control, DevTableBase, Dte, Iommu, IommuConfig};
use vm_memory::GuestMemoryAtomic;

pub const VA: u64 = 0x7f12_3456_7000;
/// GPA of the first page VA maps.
pub const PA: u64 = 0x80_0000;
pub const RD: Request = Request {
    write: false,
    exec: false,
    privileged: false,
};
pub const TAG: Tag = Tag {
    domain_id: 1,
    pasid: 1,
};

/// Tables mapping the 16 pages from VA (64 KiB) to GPA 0x80_0000 onwards.
pub fn tables(m: &Mem, levels: u8) -> u64 {
    let mut t = Tables::new(m, levels, 0x10_0000);
    for i in 0..16 {
        t.map_4k(VA + (i << 12), PA + (i << 12));
    }
    t.cr3
}

/// The IOTLB entry of the page `i` pages above VA.
pub fn entry(i: u64) -> TlbEntry {
    TlbEntry {
        va_base: VA + (i << 12),
        pa_base: PA + (i << 12),
        size_log2: 12,
        perms: Perms::ALL,
        dirty: true,
    }
}

/// An IOTLB holding `n` 4 KiB pages from VA.
pub fn iotlb(n: u64) -> Iotlb {
    let mut iotlb = Iotlb::new(n as usize);
    for i in 0..n {
        iotlb.insert(TAG, entry(i));
    }
    iotlb
}

/// An ATC holding 512 4 KiB pages from VA for PASID 1.
pub fn atc() -> Atc {
    let mut atc = Atc::new(512);
    for i in 0..512 {
        atc.insert(
            1,
            VA + (i << 12),
            AtsCompletion {
                r: true,
                w: true,
                pa_base: PA + (i << 12),
                size_log2: 12,
                ..Default::default()
            },
        );
    }
    atc
}

/// A guest with one endpoint, PASID 1 bound to 4-level tables mapping VA.
pub fn iommu() -> (Iommu, Mem) {
    let m = mem::anon(0x200_0000);
    let cr3 = tables(&m, 4);
    let dte = Dte::encode_v2(1, 0x2000, 0, true, false);
    for (i, q) in dte.0.iter().enumerate() {
        mem::store_u64(&m, 0x1000 + 32 * 0x10 + 8 * i as u64, *q).unwrap();
    }
    mem::store_u64(&m, 0x2000 + 8, cr3 | GCR3_VALID).unwrap();
    let cfg = IommuConfig {
        oracle: false,
        ..Default::default()
    };
    let iommu = Iommu::new(cfg, GuestMemoryAtomic::new(m.clone()));
    iommu
        .set_device_table(
            DevTableBase::encode(0x1000, 1),
            control::IOMMU_EN | control::GT_EN,
        )
        .unwrap();
    (iommu, m)
}
