//! The IOMMU as a whole, on hand-written tables: set-up, ATS and DMA,
//! caches and their invalidation, commands, events, PRI, the oracle and
//! fault injection.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::*;
use iommu_dev::event::{flag, PprEntry};
use iommu_dev::mem;
use iommu_dev::pgtable::{DIR, USER_RW};
use iommu_dev::walker::{PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US};
use iommu_dev::{
    control, AccessError, AccessFlags, Command, CommandError, DevTableBase, Dte, FaultAction,
    FaultPoint, FaultRule, Iommu, IommuConfig, RegError, Rule, SRange, Source,
};
use vm_memory::GuestMemoryAtomic;

const RW: AccessFlags = AccessFlags {
    privileged: false,
    exec: false,
    no_write: false,
    no_pri: true,
    atc_only: false,
    untranslated: false,
};

fn code(rec: &[u8; 16]) -> u64 {
    u64::from_le_bytes(rec[..8].try_into().unwrap()) >> 60
}

fn lo(rec: &[u8; 16]) -> u64 {
    u64::from_le_bytes(rec[..8].try_into().unwrap())
}

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
    let un = AccessFlags {
        untranslated: true,
        ..RW
    };
    let mut b = [0u8; 8];
    g.iommu.dma_read(DEVID, PASID, VA, un, &mut b).unwrap();
    // Write to a read-only page: IO_PAGE_FAULT with GN, US, PR, RW, PE.
    assert_eq!(
        g.iommu.dma_write(DEVID, PASID, VA, un, &[1]),
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
        .dma_read(DEVID, PASID, VA + 0x1000, un, &mut b)
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
        .dma_read(DEVID, PASID, VA + 0x1000, un, &mut b)
        .is_err());
    assert!(g.events().is_empty());
}

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
    assert_eq!(
        inv(
            &mut g,
            DOMAIN,
            PASID,
            true,
            false,
            SRange::decode(VA + 0x1000, false)
        ),
        (3, 3, 4)
    );
    // 8 KiB at VA+0x2000 with PDE=1: two entries and the walk-cache entries covering them.
    assert_eq!(
        inv(
            &mut g,
            DOMAIN,
            PASID,
            true,
            true,
            SRange::decode(VA + 0x2000, true)
        ),
        (1, 0, 4)
    );
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

/// What the audit reports also reaches the tracer (the daemon's --trace),
/// so a stale entry can be placed among the commands and walks around it.
#[test]
fn audit_findings_are_traced() {
    #[derive(Default)]
    struct Findings(std::sync::Mutex<Vec<iommu_dev::Finding>>);
    impl iommu_dev::Tracer for Findings {
        fn trace(&self, ev: &iommu_dev::TraceEvent) {
            if let iommu_dev::TraceEvent::Finding(f) = ev {
                self.0.lock().unwrap().push(*f);
            }
        }
    }
    let mut g = Guest::new(4);
    g.map_pages(2);
    let t = std::sync::Arc::new(Findings::default());
    g.iommu.set_tracer(Some(t.clone()));
    g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
    g.set_pte(VA, 0);
    let (stale, n) = g.iommu.audit(PASID, VA, 0x2000, 16).unwrap();
    assert_eq!(n, 2, "{stale:?}");
    assert_eq!(*t.0.lock().unwrap(), stale);
    assert!(stale
        .iter()
        .all(|f| f.rule == Rule::Stale && f.va == VA && f.current_pte == 0));
}

/// Each oracle rule, triggered and not triggered.
#[test]
fn oracle_rules() {
    let mut g = Guest::new(4);
    g.map_pages(4);
    let mut b = [0u8; 8];
    for i in 0..4 {
        g.iommu
            .dma_write(DEVID, PASID, VA + i * 0x1000, RW, &[0; 8])
            .unwrap();
    }
    let fresh = g.iommu.oracle().read(10, true);
    assert_eq!(fresh.counts, [0; 6], "no finding without a CPU change");
    // R1: different page now.
    g.set_pte(VA, (DATA + 0x10_0000) | USER_RW | PTE_A | PTE_D);
    g.iommu.dma_read(DEVID, PASID, VA, RW, &mut b).unwrap();
    // R2: write while not writable.
    g.set_pte(
        VA + 0x1000,
        (DATA + 0x1000) | PTE_P | PTE_US | PTE_A | PTE_D,
    );
    g.iommu
        .dma_write(DEVID, PASID, VA + 0x1000, RW, &[1])
        .unwrap();
    // A read of that page is fine.
    g.iommu
        .dma_read(DEVID, PASID, VA + 0x1000, RW, &mut b)
        .unwrap();
    // R3: not present.
    g.set_pte(VA + 0x2000, 0);
    g.iommu
        .dma_read(DEVID, PASID, VA + 0x2000, RW, &mut b)
        .unwrap();
    // R4: write while D=0.
    g.set_pte(VA + 0x3000, (DATA + 0x3000) | USER_RW | PTE_A);
    g.iommu
        .dma_write(DEVID, PASID, VA + 0x3000, RW, &[1])
        .unwrap();
    // ...and a read there is fine.
    g.iommu
        .dma_read(DEVID, PASID, VA + 0x3000, RW, &mut b)
        .unwrap();
    mem::store_u64(&g.mem, SEM, 42).unwrap();
    g.iommu.oracle().set_epoch_gpa(SEM);
    g.iommu
        .dma_read(DEVID, PASID, VA + 0x2000, RW, &mut b)
        .unwrap();
    let s = g.iommu.oracle().read(10, false);
    assert_eq!(s.counts, [1, 1, 2, 1, 0, 0]);
    let rules: Vec<Rule> = s.records.iter().map(|f| f.rule).collect();
    assert_eq!(
        rules,
        vec![
            Rule::StalePage,
            Rule::StaleWrite,
            Rule::AfterUnmap,
            Rule::WriteWithoutDirty,
            Rule::AfterUnmap
        ]
    );
    assert_eq!(
        s.records[0].current_pte & !0xfff & ((1 << 52) - 1),
        DATA + 0x10_0000
    );
    assert!(s.records[1].write && s.records[3].write);
    assert_eq!((s.records[3].epoch, s.records[4].epoch), (0, 42));
    assert!(s.records.windows(2).all(|w| w[0].seq < w[1].seq));
    // The audit sees the four stale ATC entries and the IOTLB's four.
    let (stale, n) = g.iommu.audit(PASID, VA, 0x4000, 16).unwrap();
    assert_eq!(n, 8, "{stale:?}");
    assert_eq!(
        stale
            .iter()
            .filter(|f| f.source == Source::Atc && f.devid == DEVID)
            .count(),
        4
    );
    assert_eq!(
        stale.iter().filter(|f| f.source == Source::Iotlb).count(),
        4
    );
    assert_eq!(
        g.iommu.audit(PASID, VA, 0x4000, 2).unwrap().0.len(),
        2,
        "max records"
    );
    assert_eq!(
        g.iommu.audit(PASID + 1, VA, 0x4000, 16).unwrap().1,
        0,
        "other PASID"
    );
    assert_eq!(
        g.iommu.audit(PASID, VA + 0x4000, 0x1000, 16).unwrap().1,
        0,
        "other range"
    );
    // After the kernel's flush the audit is clean and no new finding appears.
    assert!(g.flush(VA, VA + 0x3fff));
    assert_eq!(g.iommu.audit(PASID, VA, 0x4000, 16).unwrap().1, 0);
    g.iommu.oracle().read(0, true);
    let _ = g.iommu.dma_read(DEVID, PASID, VA, RW, &mut b);
    assert_eq!(g.iommu.oracle().read(10, false).counts, [0; 6]);
}

#[test]
fn oracle_switched_off_records_nothing() {
    let mut g = Guest::with_config(
        4,
        IommuConfig {
            oracle: false,
            ..Default::default()
        },
    );
    g.map_pages(1);
    let mut b = [0u8; 1];
    g.iommu.dma_read(DEVID, PASID, VA, RW, &mut b).unwrap();
    g.set_pte(VA, 0);
    g.iommu.dma_read(DEVID, PASID, VA, RW, &mut b).unwrap();
    assert_eq!(g.iommu.oracle().read(10, false).counts, [0; 6]);
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

#[test]
fn pri_round_trip() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    let pri = AccessFlags {
        no_pri: false,
        ..RW
    };
    thread::scope(|s| {
        let h = s.spawn(|| {
            let mut b = [0u8; 4];
            g.iommu
                .dma_read(DEVID, PASID, VA + 0x1000, pri, &mut b)
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

/// Set a leaf whose upper tables exist (as the kernel's fault handler would).
fn map_leaf(g: &Guest, va: u64, pa: u64) {
    let gpa = iommu_dev::pgtable::Tables::new(&g.mem, g.levels, POOL).entry_gpa(va, 1);
    mem::store_u64(&g.mem, gpa, pa | USER_RW).unwrap();
}

#[test]
fn pri_write_to_cow_page_and_invalid_and_failure() {
    let mut g = Guest::new(4);
    g.tables().map(VA, DATA, 1, PTE_P | PTE_US, DIR);
    let pri = AccessFlags {
        no_pri: false,
        ..RW
    };
    thread::scope(|s| {
        let h = s.spawn(|| g.iommu.dma_write(DEVID, PASID, VA, pri, &[5]));
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
                .dma_read(DEVID, PASID, VA + 0x2000, pri, &mut [0u8; 1])
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
                .dma_read(DEVID, PASID, VA + 0x2000, pri, &mut [0u8; 1])
        });
        let p = wait_ppr(&g);
        respond(&g, p.tag & 0x1ff, 0xf);
        assert!(h.join().unwrap().is_err());
    });
    assert!(g
        .iommu
        .dma_read(DEVID, PASID, VA + 0x3000, pri, &mut [0u8; 1])
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
    let pri = AccessFlags {
        no_pri: false,
        ..RW
    };
    assert_eq!(
        g.iommu.dma_read(DEVID, PASID, VA, pri, &mut [0u8; 1]),
        Err(AccessError::PriTimeout { va: VA })
    );
    let _ = g.iommu.ppr_log().take(10);
    // PPR log off: INVALID_PPR_REQUEST and an immediate Invalid answer.
    g.iommu
        .set_device_table(DevTableBase::encode(DEVTAB, 1), CTL & !control::PPR_EN)
        .unwrap();
    assert_eq!(
        g.iommu.dma_read(DEVID, PASID, VA, pri, &mut [0u8; 1]),
        Err(AccessError::Fault { va: VA })
    );
    assert_eq!(g.event_codes(), vec![9]);
}

#[test]
fn fault_injection_points() {
    let mut g = Guest::new(4);
    g.map_pages(2);
    let faults = g.iommu.faults();
    // walk_read fail -> PAGE_TAB_HARDWARE_ERROR.
    faults.add(FaultRule {
        times: 1,
        ..FaultRule::new(FaultPoint::WalkRead, FaultAction::Fail)
    });
    assert!(g.iommu.ats_translate(DEVID, PASID, VA, RW).is_err());
    assert_eq!(g.event_codes(), vec![4]);
    // iotlb_fill drop -> nothing cached.
    g.iommu.faults().clear();
    g.iommu
        .faults()
        .add(FaultRule::new(FaultPoint::IotlbFill, FaultAction::Drop));
    g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
    assert_eq!(g.iommu.cache_sizes().0, 0);
    // atc_invalidate drop -> a broken device keeps the stale entry.
    g.iommu.faults().clear();
    g.iommu
        .faults()
        .add(FaultRule::new(FaultPoint::AtcInvalidate, FaultAction::Drop));
    g.set_pte(VA, (DATA + 0x8000) | USER_RW | PTE_A | PTE_D);
    assert!(g.flush(VA, VA + 0xfff), "completion still signalled");
    assert_eq!(g.iommu.cache_sizes().2, 1);
    assert_eq!(g.iommu.audit(PASID, VA, 0x1000, 4).unwrap().1, 1);
    // atc_invalidate fail -> IOTLB_INV_TIMEOUT.
    g.iommu.faults().clear();
    g.iommu
        .faults()
        .add(FaultRule::new(FaultPoint::AtcInvalidate, FaultAction::Fail));
    g.flush(VA, VA + 0xfff);
    assert!(g.event_codes().contains(&7));
    // iotlb_invalidate drop -> the IOTLB keeps the old page.
    g.iommu.faults().clear();
    g.flush(VA, VA + 0xfff);
    g.iommu
        .ats_translate(DEVID, PASID, VA + 0x1000, RW)
        .unwrap();
    g.iommu.faults().add(FaultRule::new(
        FaultPoint::IotlbInvalidate,
        FaultAction::Drop,
    ));
    g.set_pte(VA + 0x1000, (DATA + 0x9000) | USER_RW | PTE_A | PTE_D);
    g.flush(VA + 0x1000, VA + 0x1fff);
    assert_eq!(
        g.iommu
            .ats_translate(DEVID, PASID, VA + 0x1000, RW)
            .unwrap()
            .pa_base,
        DATA + 0x1000
    );
    // command fail -> illegal; drop -> skipped.
    g.iommu.faults().clear();
    g.iommu.faults().add(FaultRule {
        times: 1,
        ..FaultRule::new(FaultPoint::Command, FaultAction::Fail)
    });
    assert_eq!(
        g.commands(&[Command::InvalidateIommuAll])
            .illegal
            .map(|i| i.2),
        Some(CommandError::Injected {
            opcode: iommu_dev::command::opcode::INVALIDATE_IOMMU_ALL
        })
    );
    g.iommu.faults().add(FaultRule {
        times: 1,
        ..FaultRule::new(FaultPoint::Command, FaultAction::Drop)
    });
    let r = g.commands(&[Command::CompletionWait {
        store: true,
        interrupt: false,
        flush: false,
        addr: SEM,
        data: 99,
    }]);
    assert_eq!(r.executed, 1);
    assert_ne!(mem::load_u64(&g.mem, SEM).unwrap(), 99);
    // pri_request drop -> timeout.
    g.iommu.faults().clear();
    g.iommu
        .faults()
        .add(FaultRule::new(FaultPoint::PriRequest, FaultAction::Drop));
    let pri = AccessFlags {
        no_pri: false,
        ..RW
    };
    assert_eq!(
        g.iommu
            .dma_read(DEVID, PASID, VA + 0x5000, pri, &mut [0u8; 1]),
        Err(AccessError::PriTimeout { va: VA + 0x5000 })
    );
    assert!(g.iommu.ppr_log().is_empty());
    assert!(g.iommu.faults().injected() >= 8);
}

/// Soundness: with the correct order (clear, flush, set) a device hammering
/// the page never sees a stale page (no R1); with set-then-flush it does.
#[test]
fn correct_order_never_r1_under_concurrency() {
    for broken in [false, true] {
        let mut g = Guest::new(4);
        g.map_pages(1);
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                let mut b = [0u8; 8];
                while !stop.load(Ordering::Relaxed) {
                    let _ = g.iommu.dma_read(DEVID, PASID, VA, RW, &mut b);
                }
            });
            let pte = |pa: u64| pa | USER_RW | PTE_A | PTE_D;
            let leaf = iommu_dev::pgtable::Tables::new(&g.mem, 4, POOL).entry_gpa(VA, 1);
            // The broken order runs until the oracle has seen it (the device
            // thread may be starved on a loaded machine), at most 10 s.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            for i in 0.. {
                let new = DATA + 0x1000 * (1 + i % 8);
                if broken {
                    if (i >= 300 && g.iommu.oracle().counts()[0] > 0)
                        || std::time::Instant::now() > deadline
                    {
                        break;
                    }
                    mem::store_u64(&g.mem, leaf, pte(new)).unwrap();
                    thread::sleep(Duration::from_micros(50));
                    assert!(g.flush(VA, VA + 0xfff));
                } else if i == 300 {
                    break;
                } else {
                    mem::store_u64(&g.mem, leaf, 0).unwrap();
                    assert!(g.flush(VA, VA + 0xfff));
                    mem::store_u64(&g.mem, leaf, pte(new)).unwrap();
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        let c = g.iommu.oracle().read(0, false).counts;
        if broken {
            assert!(c[0] > 0, "set-before-flush must show stale pages: {c:?}");
        } else {
            assert_eq!(c[0], 0, "correct order gave R1: {c:?}");
        }
    }
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

fn addr(rec: &[u8; 16]) -> u64 {
    u64::from_le_bytes(rec[8..].try_into().unwrap())
}

/// Fidelity (b): untranslated DMA through a GCR3 entry with V=0, or with a
/// PASID the GCR3 levels cannot index, is a not-present IO_PAGE_FAULT with
/// GN=1 and the PASID (§2, §3.5); ATS still answers R=W=0 without an event.
#[test]
fn untranslated_dma_without_gcr3_entry_logs_io_page_fault() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    let un = AccessFlags {
        untranslated: true,
        ..RW
    };
    let mut b = [0u8; 8];
    // PASID 5 has no GCR3 leaf entry (V=0); with a 1-level GCR3 table
    // PASID 0x203 is beyond what it indexes.
    for (pasid, write, glx) in [(5u32, false, 1), (5, true, 1), (PASID, false, 0)] {
        g.write_dte(Dte::encode_v2(DOMAIN, GCR3_ROOT, glx, true, false));
        g.commands(&[Command::InvalidateDevtabEntry { devid: DEVID }]);
        let r = if write {
            g.iommu.dma_write(DEVID, pasid, VA, un, &[1])
        } else {
            g.iommu.dma_read(DEVID, pasid, VA, un, &mut b)
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
    let un = AccessFlags {
        untranslated: true,
        ..RW
    };
    assert!(g.iommu.dma_write(DEVID, PASID, VA + 8, un, &[1]).is_err());
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
    let un = AccessFlags {
        untranslated: true,
        ..RW
    };
    assert!(g.iommu.dma_write(FAR, PASID, VA, un, &[1]).is_err());
    let l = lo(&g.events()[0].entry);
    assert_eq!(l >> 60, 2, "untranslated: IO_PAGE_FAULT");
    assert_eq!((l >> 48) & 0xfff, u64::from(flag::GN | flag::RW));
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
    let un = AccessFlags {
        untranslated: true,
        ..RW
    };
    assert!(matches!(
        g.iommu.dma_write(DEVID, PASID, VA, un, &[1]),
        Err(AccessError::Memory(_))
    ));
    assert!(g.events().is_empty());
}

fn planted(g: &Guest, point: FaultPoint, action: FaultAction) {
    g.iommu.faults().clear();
    g.iommu.faults().add(FaultRule::new(point, action));
}

/// Translate `n` pages into the IOTLB and the ATC, then move every page.
fn cache_and_move(g: &mut Guest, n: u64) {
    for i in 0..n {
        g.iommu
            .ats_translate(DEVID, PASID, VA + i * 0x1000, RW)
            .unwrap();
    }
    for i in 0..n {
        g.set_pte(
            VA + i * 0x1000,
            (DATA + 0x10_0000 + i * 0x1000) | USER_RW | PTE_A | PTE_D,
        );
    }
}

fn stale_after(g: &Guest, n: u64) -> u64 {
    g.iommu.audit(PASID, VA, n * 0x1000, 64).unwrap().1
}

/// completion_wait defer: the wait stores while the IOMMU and ATC
/// invalidations ahead of it have not taken effect; they do at the next batch.
#[test]
fn planted_completion_wait_before_invalidations() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    cache_and_move(&mut g, 1);
    planted(&g, FaultPoint::CompletionWait, FaultAction::Defer);
    assert!(g.flush(VA, VA + 0xfff), "the wait still stores");
    let (iotlb, _, atc) = g.iommu.cache_sizes();
    assert_eq!((iotlb, atc), (1, 1), "nothing removed yet");
    assert!(stale_after(&g, 1) >= 2);
    g.iommu.faults().clear();
    g.commands(&[Command::InvalidateInterruptTable { devid: DEVID }]);
    assert_eq!(stale_after(&g, 1), 0, "applied at the next batch");
}

/// atc_invalidate defer: the IOTLB is flushed at once, the ATC only after
/// the completion was reported.
#[test]
fn planted_atc_invalidation_after_its_completion() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    cache_and_move(&mut g, 1);
    planted(&g, FaultPoint::AtcInvalidate, FaultAction::Defer);
    assert!(g.flush(VA, VA + 0xfff));
    assert_eq!(g.iommu.cache_sizes().0, 0, "IOTLB flushed");
    assert_eq!(g.iommu.cache_sizes().2, 1, "ATC not yet");
    g.iommu.faults().clear();
    g.commands(&[Command::InvalidateInterruptTable { devid: DEVID }]);
    assert_eq!(g.iommu.cache_sizes().2, 0);
}

/// narrow: an 8 KiB S=1 range flushes only its first page, at both caches.
#[test]
fn planted_s_range_one_size_too_small() {
    for point in [FaultPoint::IotlbInvalidate, FaultPoint::AtcInvalidate] {
        let mut g = Guest::new(4);
        g.map_pages(2);
        cache_and_move(&mut g, 2);
        planted(&g, point, FaultAction::Narrow);
        g.flush(VA, VA + 0x1fff);
        let (iotlb, _, atc) = g.iommu.cache_sizes();
        let left = if point == FaultPoint::IotlbInvalidate {
            (iotlb, atc)
        } else {
            (atc, iotlb)
        };
        assert_eq!(left, (1, 0), "{point:?}: the second page stays");
        assert_eq!(stale_after(&g, 2), 1);
        // A single page (S=0) is not affected.
        let mut g = Guest::new(4);
        g.map_pages(1);
        cache_and_move(&mut g, 1);
        planted(&g, point, FaultAction::Narrow);
        g.flush(VA, VA + 0xfff);
        assert_eq!(stale_after(&g, 1), 0);
    }
}

/// other_pasid: the invalidation removes PASID ^ 1's entries, not its own.
#[test]
fn planted_invalidation_to_another_pasid() {
    for point in [FaultPoint::IotlbInvalidate, FaultPoint::AtcInvalidate] {
        let mut g = Guest::new(4);
        g.map_pages(1);
        cache_and_move(&mut g, 1);
        planted(&g, point, FaultAction::OtherPasid);
        g.flush(VA, VA + 0xfff);
        assert_eq!(stale_after(&g, 1), 1, "{point:?}");
    }
}

/// pwc_invalidate drop: PDE=1 flushes the IOTLB but the walk cache keeps
/// the upper levels; dte_invalidate drop: the cached DTE stays.
#[test]
fn planted_walk_cache_and_dte_cache_kept() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    cache_and_move(&mut g, 1);
    assert!(g.iommu.cache_sizes().1 > 0, "walk cache filled");
    planted(&g, FaultPoint::PwcInvalidate, FaultAction::Drop);
    g.flush(VA, VA + 0xfff);
    let (iotlb, pwc, _) = g.iommu.cache_sizes();
    assert_eq!(iotlb, 0);
    assert!(pwc > 0, "walk cache kept across PDE=1");
    g.iommu.faults().clear();
    g.flush(VA, VA + 0xfff);
    assert_eq!(g.iommu.cache_sizes().1, 0);

    planted(&g, FaultPoint::DteInvalidate, FaultAction::Drop);
    g.write_dte(Dte::encode_v2(DOMAIN, GCR3_ROOT, 1, false, false));
    g.commands(&[Command::InvalidateDevtabEntry { devid: DEVID }]);
    assert!(
        g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap().r,
        "the cached DTE (I=1) is still used"
    );
}

/// atc_fill delay: the fill lands late, and an invalidation meanwhile still
/// suppresses it (a race-window widener, not a bug).
#[test]
fn atc_fill_delay_is_not_a_bug() {
    let mut g = Guest::new(4);
    g.map_pages(1);
    g.iommu.faults().add(FaultRule {
        times: 1,
        ..FaultRule::new(
            FaultPoint::AtcFill,
            FaultAction::Delay(Duration::from_millis(50)),
        )
    });
    let t = std::time::Instant::now();
    g.iommu.ats_translate(DEVID, PASID, VA, RW).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!(g.iommu.cache_sizes().2, 1, "delayed, still filled");
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
        let pri = AccessFlags {
            no_pri: false,
            ..RW
        };
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
            let r = g.iommu.dma_write(DEVID, PASID, VA, pri, &[7]);
            stop.store(true, Ordering::Relaxed);
            assert_eq!(r.is_ok(), lands, "{miss:?}: {r:?}");
        });
        let mut b = [0u8; 1];
        mem::read(&g.mem, DATA, &mut b).unwrap();
        assert_eq!(b[0] == 7, lands, "{miss:?}: the write landed");
    }
}
