//! Page requests (PRI, §6, §8.4): the round trip through the PPR log and
//! COMPLETE_PPR_REQUEST, a write to a COW page, Invalid and Failure answers,
//! the timeout, PPR off, and a write after a silent RO->RW upgrade.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::*;
use iommu_dev::event::PprEntry;
use iommu_dev::mem;
use iommu_dev::pgtable::{DIR, USER_RW};
use iommu_dev::walker::{PTE_A, PTE_D, PTE_P, PTE_US};
use iommu_dev::{control, AccessError, Command, DevTableBase, IommuConfig};

fn respond(g: &Guest, prgi: u16, code: u8) {
    let c = Command::CompletePprRequest {
        devid: DEVID,
        pasid: PASID,
        gn: true,
        tag: prgi,
        code,
    };
    assert_eq!(g.iommu.execute(&[(CMDS, c.encode())]).executed, 1);
}

fn wait_ppr(g: &Guest) -> PprEntry {
    for _ in 0..200 {
        if let Some(r) = g.iommu.ppr_log().take(1).pop() {
            return PprEntry::decode(&r.entry);
        }
        thread::sleep(Duration::from_millis(5));
    }
    panic!("no PPR entry");
}

/// Set a leaf whose upper tables exist (as the kernel's fault handler would).
fn map_leaf(g: &Guest, va: u64, pa: u64) {
    let gpa = iommu_dev::pgtable::Tables::new(&g.mem, g.levels, POOL).entry_gpa(va, 1);
    mem::store_u64(&g.mem, gpa, pa | USER_RW).unwrap();
}

#[test]
fn pri_round_trip() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    thread::scope(|s| {
        let h = s.spawn(|| {
            let mut b = [0u8; 4];
            g.iommu
                .dma_read(DEVID, PASID, VA + 0x1000, PRI, &mut b)
                .map(|r| (r, b))
        });
        let p = wait_ppr(&g);
        assert_eq!((p.devid, p.pasid, p.addr), (DEVID, PASID, VA + 0x1000));
        assert_ne!(p.tag & 0x200, 0, "last request of the group");
        assert_eq!(p.flags & 0x164, 0x144, "GN | US | READ, not WRITE");
        // The "kernel" faults the page in, then answers.
        mem::write(&g.mem, DATA + 0x9000, &[9; 4]).unwrap();
        map_leaf(&g, VA + 0x1000, DATA + 0x9000);
        respond(&g, p.tag & 0x1ff, 0);
        let (rep, b) = h.join().unwrap().unwrap();
        assert_eq!(b, [9; 4]);
        assert_eq!(rep.page_requests, 1);
    });
}

#[test]
fn pri_write_to_cow_page_and_invalid_and_failure() {
    let mut g = Guest::new(4);
    g.tables().map(VA, DATA, 1, PTE_P | PTE_US, DIR);
    thread::scope(|s| {
        let h = s.spawn(|| g.iommu.dma_write(DEVID, PASID, VA, PRI, &[5]));
        let p = wait_ppr(&g);
        assert_ne!(p.flags & 0x20, 0, "WRITE requested");
        // COW resolved: a new writable page.
        map_leaf(&g, VA, DATA + 0x4000);
        g.flush(VA, VA + 0xfff);
        respond(&g, p.tag & 0x1ff, 0);
        assert_eq!(h.join().unwrap().unwrap().page_requests, 1);
    });
    let mut b = [0u8; 1];
    mem::read(&g.mem, DATA + 0x4000, &mut b).unwrap();
    assert_eq!(b, [5]);
    // Invalid request: the access fails, PRI continues.
    thread::scope(|s| {
        let h = s.spawn(|| {
            g.iommu
                .dma_read(DEVID, PASID, VA + 0x2000, PRI, &mut [0u8; 1])
        });
        let p = wait_ppr(&g);
        respond(&g, p.tag & 0x1ff, 1);
        assert_eq!(
            h.join().unwrap(),
            Err(AccessError::Fault { va: VA + 0x2000 })
        );
    });
    // Response failure stops PRI: the next fault does not even ask.
    thread::scope(|s| {
        let h = s.spawn(|| {
            g.iommu
                .dma_read(DEVID, PASID, VA + 0x2000, PRI, &mut [0u8; 1])
        });
        let p = wait_ppr(&g);
        respond(&g, p.tag & 0x1ff, 0xf);
        assert!(h.join().unwrap().is_err());
    });
    assert!(g
        .iommu
        .dma_read(DEVID, PASID, VA + 0x3000, PRI, &mut [0u8; 1])
        .is_err());
    assert!(g.iommu.ppr_log().is_empty());
    g.iommu.reset();
}

#[test]
fn pri_timeout_and_disabled() {
    let g = Guest::with_config(
        4,
        IommuConfig {
            pri_timeout: Duration::from_millis(50),
            ..Default::default()
        },
    );
    assert_eq!(
        g.iommu.dma_read(DEVID, PASID, VA, PRI, &mut [0u8; 1]),
        Err(AccessError::PriTimeout { va: VA })
    );
    let _ = g.iommu.ppr_log().take(10);
    // PPR log off: INVALID_PPR_REQUEST and an immediate Invalid answer.
    g.iommu
        .set_device_table(DevTableBase::encode(DEVTAB, 1), CTL & !control::PPR_EN)
        .unwrap();
    assert_eq!(
        g.iommu.dma_read(DEVID, PASID, VA, PRI, &mut [0u8; 1]),
        Err(AccessError::Fault { va: VA })
    );
    assert_eq!(g.event_codes(), vec![9]);
}

/// Fidelity (a): a write after an RO->RW upgrade that Linux makes without
/// an invalidation (wp_page_reuse()). With `ats_permission_miss = Rewalk`
/// (default) the translation request after the PRI Success walks again and
/// the write lands; with `Cached` the IOTLB keeps answering read-only, the
/// device retranslates up to the cap and the write is lost.
#[test]
fn write_after_silent_permission_upgrade() {
    for (miss, lands) in [
        (iommu_dev::PermissionMiss::Rewalk, true),
        (iommu_dev::PermissionMiss::Cached, false),
    ] {
        let mut g = Guest::with_config(
            4,
            IommuConfig {
                ats_permission_miss: miss,
                pri_timeout: Duration::from_millis(500),
                ..Default::default()
            },
        );
        g.tables().map(VA, DATA, 1, PTE_P | PTE_US | PTE_A, DIR);
        // The device reads: the IOTLB and the ATC cache the read-only PTE.
        let c = g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
        assert!(c.r && !c.w);
        let pte = g.tables().entry_gpa(VA, 1);
        let g = &g;
        // A page-request handler that upgrades the PTE in place, without
        // an invalidation, and answers Success.
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(r) = g.iommu.ppr_log().take(1).first() {
                        let e = PprEntry::decode(&r.entry);
                        mem::store_u64(&g.mem, pte, DATA | USER_RW | PTE_A | PTE_D).unwrap();
                        respond(g, e.tag & 0x1ff, 0);
                    }
                    thread::sleep(Duration::from_micros(200));
                }
            });
            let r = g.iommu.dma_write(DEVID, PASID, VA, PRI, &[7]);
            stop.store(true, Ordering::Relaxed);
            assert_eq!(r.is_ok(), lands, "{miss:?}: {r:?}");
        });
        let mut b = [0u8; 1];
        mem::read(&g.mem, DATA, &mut b).unwrap();
        assert_eq!(b[0] == 7, lands, "{miss:?}: the write landed");
    }
}
