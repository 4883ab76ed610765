//! Fault injection (docs/fault-injection.md): every injection point, the
//! planted device bugs of the fault matrix (a deferred COMPLETION_WAIT or
//! ATC invalidation, a narrowed S range, another PASID, kept walk-cache and
//! DTE-cache entries), and the ATC fill delay that is not a bug.

mod common;

use std::time::Duration;

use common::*;
use iommu_dev::mem;
use iommu_dev::pgtable::USER_RW;
use iommu_dev::walker::{PTE_A, PTE_D};
use iommu_dev::{AccessError, Command, CommandError, Dte, FaultAction, FaultPoint, FaultRule};

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
    assert_eq!(
        g.iommu
            .dma_read(DEVID, PASID, VA + 0x5000, PRI, &mut [0u8; 1]),
        Err(AccessError::PriTimeout { va: VA + 0x5000 })
    );
    assert!(g.iommu.ppr_log().is_empty());
    assert!(g.iommu.faults().injected() >= 8);
}

fn planted(g: &Guest, point: FaultPoint, action: FaultAction) {
    g.iommu.faults().clear();
    g.iommu.faults().add(FaultRule::new(point, action));
}

/// A guest with `n` pages mapped and translated into the IOTLB and the
/// ATC, then every page moved without an invalidation.
fn moved(n: u64) -> Guest {
    let mut g = Guest::new(4);
    g.map_pages(n);
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
    g
}

fn stale_after(g: &Guest, n: u64) -> u64 {
    g.iommu.audit(PASID, VA, n * 0x1000, 64).unwrap().1
}

/// completion_wait defer: the wait stores while the IOMMU and ATC
/// invalidations ahead of it have not taken effect; they do at the next batch.
#[test]
fn planted_completion_wait_before_invalidations() {
    let g = moved(1);
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
    let g = moved(1);
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
        let g = moved(2);
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
        let g = moved(1);
        planted(&g, point, FaultAction::Narrow);
        g.flush(VA, VA + 0xfff);
        assert_eq!(stale_after(&g, 1), 0);
    }
}

/// other_pasid: the invalidation removes PASID ^ 1's entries, not its own.
#[test]
fn planted_invalidation_to_another_pasid() {
    for point in [FaultPoint::IotlbInvalidate, FaultPoint::AtcInvalidate] {
        let g = moved(1);
        planted(&g, point, FaultAction::OtherPasid);
        g.flush(VA, VA + 0xfff);
        assert_eq!(stale_after(&g, 1), 1, "{point:?}");
    }
}

/// pwc_invalidate drop: PDE=1 flushes the IOTLB but the walk cache keeps
/// the upper levels; dte_invalidate drop: the cached DTE stays.
#[test]
fn planted_walk_cache_and_dte_cache_kept() {
    let g = moved(1);
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
