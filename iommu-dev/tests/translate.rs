//! ATS translation and DMA through the whole IOMMU on hand-written tables:
//! readiness before the device table, both paging modes with A/D, the
//! permission bits, large pages, a leaf outside RAM, reset, and a port's
//! memory map.

mod common;

use common::*;
use iommu_dev::mem;
use iommu_dev::pgtable::{DIR, USER_RW};
use iommu_dev::walker::{PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US};
use iommu_dev::{control, AccessError, AccessFlags, DevTableBase, Iommu, IommuConfig, RegError};
use vm_memory::GuestMemoryAtomic;

#[test]
fn not_ready_before_device_table() {
    let m = mem::anon(0x10_0000);
    let iommu = Iommu::new(IommuConfig::default(), GuestMemoryAtomic::new(m));
    let mut b = [0u8; 8];
    assert_eq!(
        iommu.dma_read(0x10, 1, 0x1000, RW, &mut b),
        Err(AccessError::NotReady)
    );
    assert_eq!(
        iommu.dma_read(0x99, 1, 0x1000, RW, &mut b),
        Err(AccessError::NoEndpoint(0x99))
    );
    assert_eq!(
        iommu.dma_read(0x10, 1 << 16, 0x1000, RW, &mut b),
        Err(AccessError::PasidRange(1 << 16))
    );
    assert!(matches!(
        iommu.set_device_table(0x1000, 1 << 40),
        Err(RegError::Reserved { .. })
    ));
    assert!(matches!(
        iommu.set_device_table(DevTableBase::encode(0xf_0000, 512), control::IOMMU_EN),
        Err(RegError::TableOutsideRam { .. })
    ));
    // Enabled table but IommuEn clear: still not ready.
    iommu
        .set_device_table(DevTableBase::encode(0x1000, 1), 0)
        .unwrap();
    assert_eq!(
        iommu.ats_translate(0x10, 1, 0x1000, RW),
        Err(AccessError::NotReady)
    );
}

#[test]
fn translate_read_write_both_paging_modes() {
    for levels in [4u8, 5] {
        let mut g = Guest::new(levels);
        g.map_pages(2);
        let c = g
            .iommu
            .ats_translate(DEVID, PASID, VA + 0x1000, RW)
            .unwrap();
        assert!(c.r && c.w && !c.u && !c.privileged);
        assert_eq!(c.pa_base, DATA + 0x1000);
        // The walk set A and, since W was granted, D (§3.4).
        assert_eq!(g.pte(VA + 0x1000) & (PTE_A | PTE_D), PTE_A | PTE_D);
        let mut b = [0u8; 16];
        let rep = g
            .iommu
            .dma_read(DEVID, PASID, VA + 0xff8, RW, &mut b)
            .unwrap();
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(
            (rep.atc_hits, rep.atc_misses),
            (1, 1),
            "page 1 was translated before"
        );
        // A write spanning two pages.
        g.iommu
            .dma_write(DEVID, PASID, VA + 0xffc, RW, &[0xab; 8])
            .unwrap();
        let mut cpu = [0u8; 8];
        mem::read(&g.mem, DATA + 0xffc, &mut cpu[..4]).unwrap();
        mem::read(&g.mem, DATA + 0x1000, &mut cpu[4..]).unwrap();
        assert_eq!(cpu, [0xab; 8]);
        assert_eq!(g.pte(VA) & PTE_D, PTE_D);
        assert!(
            g.iommu.oracle().read(10, false).records.is_empty(),
            "levels {levels}"
        );
    }
}

#[test]
fn ats_read_only_page_and_no_write_flag() {
    let mut g = Guest::new(4);
    g.tables().map(VA, DATA, 1, PTE_P | PTE_US, DIR);
    let c = g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
    assert!(c.r && !c.w, "read-only page: R only, not a fault");
    assert_eq!(
        g.pte(VA) & PTE_D,
        0,
        "never D on a translation that is not writable"
    );
    g.tables().map(VA + 0x1000, DATA + 0x1000, 1, USER_RW, DIR);
    let c = g
        .iommu
        .ats_translate(
            DEVID,
            PASID,
            VA + 0x1000,
            AccessFlags {
                no_write: true,
                ..RW
            },
        )
        .unwrap();
    assert!(c.r && !c.w, "NW=1 asks for read only");
    assert_eq!(g.pte(VA + 0x1000) & PTE_D, 0, "NW=1 leaves D alone");
    // A write to the read-only page faults (no PRI here).
    assert_eq!(
        g.iommu.dma_write(DEVID, PASID, VA, RW, &[1]),
        Err(AccessError::Fault { va: VA })
    );
    // Supervisor-only page: user request faults, privileged succeeds.
    g.tables()
        .map(VA + 0x2000, DATA + 0x2000, 1, PTE_P | PTE_RW, DIR);
    assert!(g
        .iommu
        .ats_translate(DEVID, PASID, VA + 0x2000, RW)
        .unwrap()
        .is_fault());
    let c = g
        .iommu
        .ats_translate(
            DEVID,
            PASID,
            VA + 0x2000,
            AccessFlags {
                privileged: true,
                ..RW
            },
        )
        .unwrap();
    assert!(c.r && c.w && c.privileged);
    // Execute on an NX page: R without Exe is still granted for the read.
    g.tables()
        .map(VA + 0x3000, DATA + 0x3000, 1, USER_RW | 1 << 63, DIR);
    assert!(g
        .iommu
        .ats_translate(DEVID, PASID, VA + 0x3000, AccessFlags { exec: true, ..RW })
        .unwrap()
        .is_fault());
    g.tables().map(VA + 0x4000, DATA + 0x4000, 1, USER_RW, DIR);
    assert!(
        g.iommu
            .ats_translate(DEVID, PASID, VA + 0x4000, AccessFlags { exec: true, ..RW })
            .unwrap()
            .exe
    );
    assert!(g.events().is_empty(), "ATS faults are not logged");
}

#[test]
fn large_pages_in_completions() {
    let mut g = Guest::new(4);
    g.tables()
        .map(VA + 0x20_0000, 0x20_0000 * 8, 2, USER_RW, DIR);
    let c = g
        .iommu
        .ats_translate(DEVID, PASID, VA + 0x21_2000, RW)
        .unwrap();
    assert_eq!((c.pa_base, c.size_log2), (0x100_0000, 21));
    let v = c.encode();
    assert_eq!(v & 0x800, 0x800, "S=1");
    let mut b = [0u8; 4];
    g.iommu
        .dma_read(DEVID, PASID, VA + 0x3f_fff0, RW, &mut b)
        .unwrap();
    assert_eq!(g.iommu.cache_sizes().2, 1, "one 2 MiB ATC entry");
}

/// Fidelity (e), a documented decision: a leaf that points outside guest
/// RAM translates (the IOMMU checks reserved bits, not the address map), so
/// no IOMMU event is logged; the access itself fails as a bus error would
/// (`AccessError::Memory`), which the device reports (§3.5, §9).
#[test]
fn leaf_outside_ram_translates_and_the_access_fails_without_event() {
    let mut g = Guest::new(4);
    g.tables().map(VA, 0x8000_0000, 1, USER_RW, DIR);
    let c = g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
    assert!(c.r && c.pa_base == 0x8000_0000);
    assert!(matches!(
        g.iommu.dma_read(DEVID, PASID, VA, RW, &mut [0u8; 4]),
        Err(AccessError::Memory(_))
    ));
    assert!(matches!(
        g.iommu.dma_write(DEVID, PASID, VA, UN, &[1]),
        Err(AccessError::Memory(_))
    ));
    assert!(g.events().is_empty());
}

#[test]
fn reset_forgets_everything() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
    g.iommu.execute(&[(CMDS, [0u8; 16])]);
    g.iommu.reset();
    assert_eq!(g.iommu.cache_sizes(), (0, 0, 0));
    assert!(g.iommu.event_log().is_empty());
    assert_eq!(
        g.iommu.ats_translate(DEVID, PASID, VA, RW),
        Err(AccessError::NotReady)
    );
}

/// A port keeps its memory map until the frontend sends a new one.
#[test]
fn port_follows_memory_table_updates() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    let mut port = g.iommu.port();
    let mut b = [0u8; 8];
    port.dma_read(DEVID, PASID, VA, RW, &mut b).unwrap();
    port.dma_write(DEVID, PASID, VA, RW, &[3; 8]).unwrap();
    assert!(port.ats_translate(DEVID, PASID, VA, RW).unwrap().w);
    // The new map no longer has the page the ATC points at.
    g.iommu
        .set_memory(GuestMemoryAtomic::new(mem::anon(0x1000)));
    assert!(matches!(
        port.dma_read(DEVID, PASID, VA, RW, &mut b),
        Err(AccessError::Memory(_))
    ));
}
