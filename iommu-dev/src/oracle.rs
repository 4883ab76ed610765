//! Coherence oracle: findings of accesses that used a cached translation the
//! CPU tables no longer support, and of cached entries that outlived the
//! kernel's invalidation.
//!
//! How to judge findings:
//! - R2 (stale write permission), R3 (access after unmap) and R4 (write
//!   without dirty) are normal inside the window between a PTE change and
//!   the kernel's secondary-TLB flush: Linux 6.12 flushes mprotect and zap
//!   only after `invalidate_range_end`.
//! - R1 (stale page: the current PTE maps a different page) is what the 2017
//!   thread forbids for page replacement (COW, KSM, migration, THP). It can
//!   legitimately appear when user space itself races an unmap with accesses
//!   to the same range (MADV_DONTNEED against a refault).
//! - A `Stale` audit finding after the kernel operation has returned is
//!   always a bug.
//!
//! An invalidation waits for the accesses in flight on the entries it
//! removes, so the model never produces a finding a correct ordering would not.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

crate::named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    #[repr(u32)]
    pub enum Rule {
        /// R1: the current PTE maps a different page than the cached translation.
        StalePage = 1 => "R1",
        /// R2: a write while the current PTE is not writable.
        StaleWrite = 2 => "R2",
        /// R3: an access while the current PTE is not present.
        AfterUnmap = 3 => "R3",
        /// R4: a write while the current leaf has D=0.
        WriteWithoutDirty = 4 => "R4",
        /// Audit: a cached entry disagrees with the tables in memory.
        Stale = 5 => "STALE",
    }
}

/// Which cache held the translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Source {
    Atc = 1,
    Iotlb = 2,
    WalkCache = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    /// 0xffff for IOTLB and walk-cache entries.
    pub devid: u16,
    pub source: Source,
    pub pasid: u32,
    pub write: bool,
    pub va: u64,
    pub cached_pa: u64,
    pub current_pte: u64,
    pub seq: u64,
    pub epoch: u64,
}

/// Counts by rule: [R1, R2, R3, R4, STALE, dropped].
pub type Counts = [u64; 6];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub counts: Counts,
    pub records: Vec<Finding>,
}

/// The bounded findings log of per-access checks.
#[derive(Debug)]
pub struct Oracle {
    enabled: bool,
    capacity: usize,
    log: Mutex<VecDeque<Finding>>,
    counts: [AtomicU64; 6],
    seq: AtomicU64,
    epoch_gpa: AtomicU64,
}

impl Oracle {
    pub fn new(enabled: bool, capacity: usize) -> Self {
        Oracle {
            enabled,
            capacity,
            log: Mutex::new(VecDeque::new()),
            counts: Default::default(),
            seq: AtomicU64::new(0),
            epoch_gpa: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The guest word findings are tagged with (0 = none).
    pub fn set_epoch_gpa(&self, gpa: u64) {
        self.epoch_gpa.store(gpa, Ordering::Relaxed);
    }

    pub fn epoch_gpa(&self) -> u64 {
        self.epoch_gpa.load(Ordering::Relaxed)
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Record a per-access finding.
    pub fn record(&self, f: Finding) {
        self.counts[f.rule as usize - 1].fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap();
        if log.len() >= self.capacity {
            self.counts[5].fetch_add(1, Ordering::Relaxed);
        } else {
            log.push_back(f);
        }
    }

    pub fn counts(&self) -> Counts {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Read up to `max` records (oldest first); `clear` empties the log and
    /// zeroes the counters.
    pub fn read(&self, max: usize, clear: bool) -> Snapshot {
        let mut log = self.log.lock().unwrap();
        let records = log.iter().take(max).copied().collect();
        let counts = self.counts();
        if clear {
            log.clear();
            self.counts
                .iter()
                .for_each(|c| c.store(0, Ordering::Relaxed));
        }
        Snapshot { counts, records }
    }

    pub fn reset(&self) {
        self.read(0, true);
        self.set_epoch_gpa(0);
    }
}

/// Classify one access against the current leaf (None = not present).
/// `current` is (PA of the page now, writable, dirty, leaf entry).
pub fn classify(
    cached_pa_page: u64,
    write: bool,
    current: Option<(u64, bool, bool, u64)>,
) -> Option<Rule> {
    match current {
        None => Some(Rule::AfterUnmap),
        Some((pa_page, _, _, _)) if pa_page != cached_pa_page => Some(Rule::StalePage),
        Some((_, writable, _, _)) if write && !writable => Some(Rule::StaleWrite),
        Some((_, _, dirty, _)) if write && !dirty => Some(Rule::WriteWithoutDirty),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_rows() {
        let cur = |pa, w, d| Some((pa, w, d, 0));
        assert_eq!(classify(0x1000, false, None), Some(Rule::AfterUnmap));
        assert_eq!(
            classify(0x1000, false, cur(0x2000, true, true)),
            Some(Rule::StalePage)
        );
        assert_eq!(
            classify(0x1000, true, cur(0x1000, false, true)),
            Some(Rule::StaleWrite)
        );
        assert_eq!(
            classify(0x1000, true, cur(0x1000, true, false)),
            Some(Rule::WriteWithoutDirty)
        );
        assert_eq!(classify(0x1000, true, cur(0x1000, true, true)), None);
        assert_eq!(classify(0x1000, false, cur(0x1000, false, false)), None);
    }

    #[test]
    fn bounded_log_and_clear() {
        let o = Oracle::new(true, 2);
        let f = Finding {
            rule: Rule::StalePage,
            devid: 1,
            source: Source::Atc,
            pasid: 1,
            write: false,
            va: 0,
            cached_pa: 0,
            current_pte: 0,
            seq: 1,
            epoch: 0,
        };
        for _ in 0..3 {
            o.record(f);
        }
        o.record(Finding {
            rule: Rule::WriteWithoutDirty,
            ..f
        });
        let s = o.read(10, false);
        assert_eq!(s.counts, [3, 0, 0, 1, 0, 2]);
        assert_eq!(s.records.len(), 2);
        assert_eq!(o.read(1, true).records.len(), 1);
        assert_eq!(o.read(10, false), Snapshot::default());
    }
}
