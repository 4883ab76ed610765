//! The caches (IOTLB, walk cache, device ATC) and the commands that empty
//! them (§4): stale until invalidated, which fields select which entries,
//! COMPLETION_WAIT ordered after the invalidations before it, and an
//! illegal command stopping its batch.

mod common;

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use common::*;
use iommu_dev::mem;
use iommu_dev::pgtable::{DIR, USER_RW};
use iommu_dev::walker::{PTE_A, PTE_D};
use iommu_dev::{Command, CommandError, Rule, SRange, Source};

/// The IOMMU caches what it walked and honours changes only when told.
#[test]
fn iotlb_and_atc_keep_stale_translations_until_invalidated() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    assert_eq!(
        g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap().pa_base,
        DATA
    );
    // CPU remaps the page without telling anyone.
    g.set_pte(VA, (DATA + 0x5000) | USER_RW | PTE_A | PTE_D);
    assert_eq!(
        g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap().pa_base,
        DATA,
        "IOTLB hit"
    );
    // Only the IOMMU is flushed: the device's ATC still holds the old page.
    g.commands(&[Command::InvalidateIommuPages {
        domain_id: DOMAIN,
        pasid: PASID,
        gn: true,
        pde: true,
        range: SRange::decode(VA, false),
    }]);
    let mut b = [0u8; 1];
    g.iommu.dma_read(DEVID, PASID, VA, RW, &mut b).unwrap();
    let s = g.iommu.oracle().read(10, true);
    assert_eq!(s.counts[0], 1, "R1: device used the old page");
    assert_eq!(s.records[0].source, Source::Atc);
    assert_eq!(s.records[0].cached_pa, DATA);
    // The device IOTLB too: now the access sees the new page.
    assert!(g.flush(VA, VA + 0xfff));
    g.iommu.dma_read(DEVID, PASID, VA, RW, &mut b).unwrap();
    assert_eq!(g.iommu.oracle().read(10, false).counts, [0; 6]);
    assert_eq!(
        g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap().pa_base,
        DATA + 0x5000
    );
}

#[test]
fn invalidation_fields_select_exactly() {
    let mut g = Guest::new(4);
    g.map_pages(4);
    for i in 0..4 {
        g.iommu
            .ats_translate(DEVID, PASID, VA + i * 0x1000, RW)
            .unwrap();
    }
    let (iotlb, pwc, atc) = g.iommu.cache_sizes();
    assert_eq!((iotlb, pwc, atc), (4, 3, 4));
    let inv = |g: &mut Guest, domain_id, pasid, gn, pde, range| {
        g.commands(&[Command::InvalidateIommuPages {
            domain_id,
            pasid,
            gn,
            pde,
            range,
        }]);
        g.iommu.cache_sizes()
    };
    // Wrong domain, wrong PASID, GN=0: nothing goes.
    assert_eq!(
        inv(&mut g, DOMAIN + 1, PASID, true, true, SRange::EVERYTHING),
        (4, 3, 4)
    );
    assert_eq!(
        inv(&mut g, DOMAIN, PASID + 1, true, true, SRange::EVERYTHING),
        (4, 3, 4)
    );
    assert_eq!(
        inv(&mut g, DOMAIN, PASID, false, true, SRange::EVERYTHING),
        (4, 3, 4)
    );
    // One page, PDE=0: one IOTLB entry, the walk cache stays.
    let page = SRange::decode(VA + 0x1000, false);
    assert_eq!(inv(&mut g, DOMAIN, PASID, true, false, page), (3, 3, 4));
    // 8 KiB at VA+0x2000 with PDE=1: two entries and the walk-cache entries covering them.
    let two = SRange::decode(VA + 0x2000, true);
    assert_eq!(inv(&mut g, DOMAIN, PASID, true, true, two), (1, 0, 4));
    // INVALIDATE_IOTLB_PAGES without GN (all PASIDs) for one page; then with GN, everything.
    let atc = |g: &mut Guest, pasid, gn, range| {
        g.commands(&[Command::InvalidateIotlbPages {
            devid: DEVID,
            pasid,
            gn,
            maxpend: 0,
            queue_id: DEVID,
            range,
        }]);
        g.iommu.cache_sizes().2
    };
    assert_eq!(atc(&mut g, 0, false, SRange::decode(VA, false)), 3);
    assert_eq!(
        atc(&mut g, PASID + 1, true, SRange::EVERYTHING),
        3,
        "another PASID"
    );
    assert_eq!(atc(&mut g, PASID, true, SRange::EVERYTHING), 0);
    // INVALIDATE_IOMMU_ALL empties the IOMMU caches, not the device's ATC.
    g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
    assert_eq!(g.commands(&[Command::InvalidateIommuAll]).executed, 1);
    assert_eq!(g.iommu.cache_sizes(), (0, 0, 1));
}

#[test]
fn walk_cache_is_used_and_audited() {
    let mut g = Guest::new(4);
    g.map_pages(2);
    g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
    g.iommu
        .ats_translate(DEVID, PASID, VA + 0x1000, RW)
        .unwrap();
    assert!(g.iommu.stats().pwc_hits.load(Ordering::Relaxed) >= 1);
    // The CPU moves the PTE table (e.g. a page-table page freed and
    // replaced) without a PDE flush: the walk cache keeps the old pointer.
    let pde = g.tables().entry_gpa(VA, 2);
    let old = mem::load_u64(&g.mem, pde).unwrap();
    mem::store_u64(&g.mem, pde, 0x3f_0000 | DIR).unwrap();
    mem::store_u64(&g.mem, 0x3f_0000, (DATA + 0x7000) | USER_RW).unwrap();
    let (stale, n) = g.iommu.audit(PASID, VA, 0x2000, 16).unwrap();
    assert!(n >= 1);
    assert!(stale
        .iter()
        .any(|f| f.source == Source::WalkCache && f.rule == Rule::Stale));
    assert!(
        stale.iter().any(|f| f.source == Source::Atc),
        "ATC still maps the old pages"
    );
    assert!(g.flush(VA, VA + 0x1fff));
    assert_eq!(g.iommu.audit(PASID, VA, 0x2000, 16).unwrap().1, 0);
    assert_eq!(
        g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap().pa_base,
        DATA + 0x7000
    );
    let _ = old;
}

#[test]
fn completion_wait_stores_only_after_earlier_invalidation_completes() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
    // An access in flight on the ATC entry holds the invalidation up.
    let mem_ = g.mem.clone();
    let gg = &g;
    let ep = gg.iommu.endpoint(DEVID).unwrap();
    let inflight = ep.gate.read();
    assert!(inflight.atc.lookup(PASID, VA).is_some());
    let cmds = [
        Command::InvalidateIotlbPages {
            devid: DEVID,
            pasid: PASID,
            gn: true,
            maxpend: 0,
            queue_id: DEVID,
            range: SRange::EVERYTHING,
        },
        Command::CompletionWait {
            store: true,
            interrupt: true,
            flush: false,
            addr: SEM,
            data: 77,
        },
    ];
    let raw: Vec<(u64, [u8; 16])> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| (CMDS + 16 * i as u64, c.encode()))
        .collect();
    thread::scope(|s| {
        let h = s.spawn(|| gg.iommu.execute(&raw));
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            mem::load_u64(&mem_, SEM).unwrap(),
            0,
            "store landed before the invalidation completed"
        );
        drop(inflight);
        let r = h.join().unwrap();
        assert_eq!((r.executed, r.comp_wait_int, r.illegal), (2, 1, None));
    });
    assert_eq!(mem::load_u64(&mem_, SEM).unwrap(), 77);
}

#[test]
fn illegal_command_stops_the_batch() {
    let g = Guest::new(4);
    let mut bad = Command::InvalidateDevtabEntry { devid: 1 }.encode();
    bad[3] = 1; // reserved bits 31:16
    let raw = vec![
        (
            CMDS,
            Command::CompletionWait {
                store: true,
                interrupt: false,
                flush: false,
                addr: SEM,
                data: 1,
            }
            .encode(),
        ),
        (CMDS + 16, bad),
        (
            CMDS + 32,
            Command::CompletionWait {
                store: true,
                interrupt: false,
                flush: false,
                addr: SEM,
                data: 2,
            }
            .encode(),
        ),
    ];
    let r = g.iommu.execute(&raw);
    assert_eq!(r.executed, 1);
    assert!(matches!(r.illegal, Some((1, gpa, CommandError::Reserved { .. })) if gpa == CMDS + 16));
    assert_eq!(
        mem::load_u64(&g.mem, SEM).unwrap(),
        1,
        "nothing after the illegal command ran"
    );
    let ev = g.events();
    assert_eq!(code(&ev[0].entry), 5);
    assert_eq!(
        u64::from_le_bytes(ev[0].entry[8..].try_into().unwrap()),
        CMDS + 16
    );
    // Unknown opcode and a store outside RAM.
    let r = g.iommu.execute(&[(CMDS, [0u8; 16])]);
    assert_eq!(r.illegal.map(|i| i.2), Some(CommandError::Opcode(0)));
    let r = g.commands(&[Command::CompletionWait {
        store: true,
        interrupt: false,
        flush: false,
        addr: 0xf_0000_0000,
        data: 1,
    }]);
    assert_eq!(
        r.illegal.map(|i| i.2),
        Some(CommandError::StoreOutsideRam {
            addr: 0xf_0000_0000
        })
    );
    let _ = g.events();
}
