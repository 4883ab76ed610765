//! What the IOMMU writes to its event log (§5): DTE problems, table reads
//! outside RAM, untranslated DMA faults with their flags and PASID, devices
//! beyond the device table, and the log's own enable bit and overflow.

mod common;

use std::time::Duration;

use common::*;
use iommu_dev::event::flag;
use iommu_dev::mem;
use iommu_dev::pgtable::DIR;
use iommu_dev::walker::{PTE_P, PTE_US};
use iommu_dev::{control, AccessError, Command, DevTableBase, Dte, IommuConfig};

#[test]
fn dte_problems_become_events() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    // I=0: ATS not allowed -> INVALID_DEVICE_REQUEST (TR=1).
    g.write_dte(Dte::encode_v2(DOMAIN, GCR3_ROOT, 1, false, false));
    g.commands(&[Command::InvalidateDevtabEntry { devid: DEVID }]);
    assert_eq!(
        g.iommu.ats_translate(DEVID, PASID, VA, RW),
        Err(AccessError::Device { va: VA })
    );
    let ev = g.events();
    assert_eq!(code(&ev[0].entry), 8);
    assert_ne!(lo(&ev[0].entry) >> 56 & 1, 0, "TR");
    // Reserved bit -> ILLEGAL_DEV_TABLE_ENTRY with RZ.
    let mut d = Dte::encode_v2(DOMAIN, GCR3_ROOT, 1, true, false);
    d.0[0] |= 1 << 4;
    g.write_dte(d);
    g.commands(&[Command::InvalidateDevtabEntry { devid: DEVID }]);
    assert!(g.iommu.ats_translate(DEVID, PASID, VA, RW).is_err());
    let ev = g.events();
    assert_eq!(code(&ev[0].entry), 1);
    assert_ne!(lo(&ev[0].entry) >> 55 & 1, 0, "RZ");
    // GCR3 root outside RAM -> PAGE_TAB_HARDWARE_ERROR.
    g.write_dte(Dte::encode_v2(DOMAIN, 0x7fff_f000, 1, true, false));
    g.commands(&[Command::InvalidateDevtabEntry { devid: DEVID }]);
    assert!(g.iommu.ats_translate(DEVID, PASID, VA, RW).is_err());
    assert_eq!(g.event_codes(), vec![4]);
    // Without the DTE invalidation the cached DTE keeps being used.
    g.write_dte(Dte::encode_v2(DOMAIN, GCR3_ROOT, 1, true, false));
    assert!(g.iommu.ats_translate(DEVID, PASID, VA, RW).is_err());
    g.commands(&[Command::InvalidateDevtabEntry { devid: DEVID }]);
    assert!(g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap().r);
    // A PASID the 2-level GCR3 table has no entry for: a fault, not an error.
    assert!(g.iommu.ats_translate(DEVID, 5, VA, RW).unwrap().is_fault());
}

#[test]
fn table_pointer_outside_ram_is_hardware_error() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    let pde = g.tables().entry_gpa(VA, 2);
    mem::store_u64(&g.mem, pde, 0x7000_0000 | DIR).unwrap();
    assert_eq!(
        g.iommu.ats_translate(DEVID, PASID, VA, RW),
        Err(AccessError::Device { va: VA })
    );
    let ev = g.events();
    assert_eq!(code(&ev[0].entry), 4);
    let addr = u64::from_le_bytes(ev[0].entry[8..].try_into().unwrap());
    assert!(
        addr >= 0x7000_0000,
        "address of the failed table read: {addr:#x}"
    );
}

#[test]
fn untranslated_dma_logs_io_page_faults() {
    let mut g = Guest::new(4);
    g.tables().map(VA, DATA, 1, PTE_P | PTE_US, DIR);
    let mut b = [0u8; 8];
    g.iommu.dma_read(DEVID, PASID, VA, UN, &mut b).unwrap();
    // Write to a read-only page: IO_PAGE_FAULT with GN, US, PR, RW, PE.
    assert_eq!(
        g.iommu.dma_write(DEVID, PASID, VA, UN, &[1]),
        Err(AccessError::Fault { va: VA })
    );
    let ev = g.events();
    assert_eq!(ev.len(), 1);
    let l = lo(&ev[0].entry);
    assert_eq!(l >> 60, 2);
    let flags = (l >> 48) & 0xfff;
    assert_eq!(
        flags,
        u64::from(flag::GN | flag::US | flag::PR | flag::RW | flag::PE)
    );
    assert_eq!((l >> 32) & 0xffff, u64::from(PASID), "PASID in 47:32");
    // Not present: PR=0.
    assert!(g
        .iommu
        .dma_read(DEVID, PASID, VA + 0x1000, UN, &mut b)
        .is_err());
    let l = lo(&g.events()[0].entry);
    assert_eq!((l >> 48) & 0xfff, u64::from(flag::GN | flag::US));
    // SA=1 suppresses the event.
    let mut d = Dte::encode_v2(DOMAIN, GCR3_ROOT, 1, true, false);
    d.0[1] |= 1 << 34;
    g.write_dte(d);
    g.commands(&[Command::InvalidateDevtabEntry { devid: DEVID }]);
    assert!(g
        .iommu
        .dma_read(DEVID, PASID, VA + 0x1000, UN, &mut b)
        .is_err());
    assert!(g.events().is_empty());
}

/// Fidelity (b): untranslated DMA through a GCR3 entry with V=0, or with a
/// PASID the GCR3 levels cannot index, is a not-present IO_PAGE_FAULT with
/// GN=1 and the PASID (§2, §3.5); ATS still answers R=W=0 without an event.
#[test]
fn untranslated_dma_without_gcr3_entry_logs_io_page_fault() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    let mut b = [0u8; 8];
    // PASID 5 has no GCR3 leaf entry (V=0); with a 1-level GCR3 table
    // PASID 0x203 is beyond what it indexes.
    for (pasid, write, glx) in [(5u32, false, 1), (5, true, 1), (PASID, false, 0)] {
        g.write_dte(Dte::encode_v2(DOMAIN, GCR3_ROOT, glx, true, false));
        g.commands(&[Command::InvalidateDevtabEntry { devid: DEVID }]);
        let r = if write {
            g.iommu.dma_write(DEVID, pasid, VA, UN, &[1])
        } else {
            g.iommu.dma_read(DEVID, pasid, VA, UN, &mut b)
        };
        assert!(r.is_err(), "PASID {pasid:#x}");
        let ev = g.events();
        assert_eq!(ev.len(), 1, "PASID {pasid:#x}: one event");
        let l = lo(&ev[0].entry);
        assert_eq!(l >> 60, 2, "IO_PAGE_FAULT");
        let want = flag::GN | flag::US | if write { flag::RW } else { 0 };
        assert_eq!((l >> 48) & 0xfff, u64::from(want));
        assert_eq!((l >> 32) & 0xffff, u64::from(pasid & 0xffff));
        assert_eq!((l >> 16) & 0xf, u64::from(pasid >> 16));
        assert_eq!(addr(&ev[0].entry), VA);
    }
    assert!(g.iommu.ats_translate(DEVID, 5, VA, RW).unwrap().is_fault());
    assert!(g.events().is_empty(), "ATS: R=W=0, no event");
}

/// Fidelity (c): ILLEGAL_DEV_TABLE_ENTRY carries the request's PASID with
/// GN=1, RW and the address (§5.3), not zeros.
#[test]
fn illegal_dte_event_names_pasid_and_address() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    let mut d = Dte::encode_v2(DOMAIN, GCR3_ROOT, 1, true, false);
    d.0[0] |= 1 << 4;
    g.write_dte(d);
    g.commands(&[Command::InvalidateDevtabEntry { devid: DEVID }]);
    assert!(g.iommu.dma_write(DEVID, PASID, VA + 8, UN, &[1]).is_err());
    let ev = g.events();
    let l = lo(&ev[0].entry);
    assert_eq!(l >> 60, 1);
    assert_eq!((l >> 48) & 0xfff, u64::from(flag::GN | flag::RZ | flag::RW));
    assert_eq!((l >> 32) & 0xffff, u64::from(PASID));
    assert_eq!(addr(&ev[0].entry), VA + 8);
    assert!(g.iommu.ats_translate(DEVID, PASID, VA, RW).is_err());
    let l = lo(&g.events()[0].entry);
    assert_eq!((l >> 48) & 0xfff, u64::from(flag::GN | flag::RZ | flag::TR));
}

/// Fidelity (d): a DeviceID beyond the device table has no DTE; it is
/// handled as a DTE with V=0 (§7.1, §9): an ATS request logs
/// INVALID_DEVICE_REQUEST with TR=1, type 0, GN, PASID and the request's
/// address, untranslated DMA an IO_PAGE_FAULT, never type 2 (port I/O for
/// TR=0) with address 0.
#[test]
fn device_beyond_device_table_is_handled_as_v0() {
    const FAR: u16 = 0x200; // the table has 128 entries (one 4 KiB page)
    let mut g = Guest::with_config(
        4,
        IommuConfig {
            endpoints: vec![DEVID, FAR],
            pri_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    );
    g.map_pages(1);
    assert_eq!(
        g.iommu.ats_translate(FAR, PASID, VA + 0x40, RW),
        Err(AccessError::Device { va: VA + 0x40 })
    );
    let ev = g.events();
    assert_eq!(ev.len(), 1);
    let l = lo(&ev[0].entry);
    assert_eq!(l >> 60, 8, "INVALID_DEVICE_REQUEST");
    assert_eq!(l & 0xffff, u64::from(FAR));
    assert_eq!((l >> 48) & 0x1ff, u64::from(flag::TR | flag::GN));
    assert_eq!((l >> 57) & 7, 0, "type 0: translation not allowed");
    assert_eq!((l >> 32) & 0xffff, u64::from(PASID));
    assert_eq!(addr(&ev[0].entry), VA + 0x40);
    assert!(g.iommu.dma_write(FAR, PASID, VA, UN, &[1]).is_err());
    let l = lo(&g.events()[0].entry);
    assert_eq!(l >> 60, 2, "untranslated: IO_PAGE_FAULT");
    assert_eq!((l >> 48) & 0xfff, u64::from(flag::GN | flag::RW));
}

#[test]
fn event_log_disabled_and_overflow() {
    let g = Guest::with_config(
        4,
        IommuConfig {
            event_log_entries: 2,
            ..Default::default()
        },
    );
    for _ in 0..5 {
        g.iommu.execute(&[(CMDS, [0u8; 16])]);
    }
    assert_eq!(
        (g.iommu.event_log().logged(), g.iommu.event_log().dropped()),
        (2, 3)
    );
    let _ = g.events();
    g.iommu
        .set_device_table(
            DevTableBase::encode(DEVTAB, 1),
            CTL & !control::EVENT_LOG_EN,
        )
        .unwrap();
    g.iommu.execute(&[(CMDS, [0u8; 16])]);
    assert!(g.events().is_empty());
}
