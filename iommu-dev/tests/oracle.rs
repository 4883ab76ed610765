//! The coherence oracle and the audit: each rule triggered and not, the
//! audit's findings reaching the tracer, the oracle switched off, and the
//! correct invalidation order never giving R1 under a hammering device.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::*;
use iommu_dev::mem;
use iommu_dev::pgtable::USER_RW;
use iommu_dev::walker::{PTE_A, PTE_D, PTE_P, PTE_US};
use iommu_dev::{IommuConfig, Rule, Source};

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
            // The broken order runs until the oracle has seen it, at most
            // 60 s; the window widens after 1000 tries, for a device thread
            // starved on a loaded machine.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            for i in 0.. {
                let new = DATA + 0x1000 * (1 + i % 8);
                if broken {
                    if (i >= 300 && g.iommu.oracle().counts()[0] > 0)
                        || std::time::Instant::now() > deadline
                    {
                        break;
                    }
                    mem::store_u64(&g.mem, leaf, pte(new)).unwrap();
                    thread::sleep(Duration::from_micros(if i < 1000 { 50 } else { 1000 }));
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
