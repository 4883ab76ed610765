//! Named fault-injection points. A rule at a point can drop, delay or fail the
//! operation, filtered like Linux's fault-injection knobs (probability,
//! interval, times, skip the first N as with fail-nth).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// A page-table read by the walker (fail: PAGE_TAB_HARDWARE_ERROR).
    WalkRead,
    /// Filling the IOTLB after a walk (drop: not cached).
    IotlbFill,
    /// INVALIDATE_IOMMU_PAGES / _ALL on the IOTLB and walk cache (drop: nothing removed).
    IotlbInvalidate,
    /// INVALIDATE_DEVTAB_ENTRY (drop: the cached DTE stays).
    DteInvalidate,
    /// Any command before it executes (drop: skipped; fail: illegal).
    Command,
    /// An endpoint storing a completion in its ATC (drop: not cached).
    AtcFill,
    /// INVALIDATE_IOTLB_PAGES reaching an endpoint's ATC (drop: ignored and
    /// completed anyway, a broken device; fail: no completion, IOTLB_INV_TIMEOUT).
    AtcInvalidate,
    /// A PRI page request leaving the endpoint (drop: lost).
    PriRequest,
    /// A PRG response reaching the endpoint (drop: lost).
    PriResponse,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 9] = [
        FaultPoint::WalkRead,
        FaultPoint::IotlbFill,
        FaultPoint::IotlbInvalidate,
        FaultPoint::DteInvalidate,
        FaultPoint::Command,
        FaultPoint::AtcFill,
        FaultPoint::AtcInvalidate,
        FaultPoint::PriRequest,
        FaultPoint::PriResponse,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            FaultPoint::WalkRead => "walk_read",
            FaultPoint::IotlbFill => "iotlb_fill",
            FaultPoint::IotlbInvalidate => "iotlb_invalidate",
            FaultPoint::DteInvalidate => "dte_invalidate",
            FaultPoint::Command => "command",
            FaultPoint::AtcFill => "atc_fill",
            FaultPoint::AtcInvalidate => "atc_invalidate",
            FaultPoint::PriRequest => "pri_request",
            FaultPoint::PriResponse => "pri_response",
        }
    }
}

impl FromStr for FaultPoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultPoint::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FaultPoint::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown fault point '{s}' (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// What happens at a point when a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    Drop,
    Delay(Duration),
    Fail,
}

/// A rule: point, action, and when it fires.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub point: FaultPoint,
    pub action: FaultAction,
    /// Chance of firing on an eligible hit, 0.0..=1.0.
    pub probability: f64,
    /// Only every `interval`-th eligible hit (1 = each).
    pub interval: u64,
    /// Fire at most this many times (-1 = unlimited).
    pub times: i64,
    /// Let the first `skip` hits pass (fail-nth = skip + 1).
    pub skip: u64,
    pub devid: Option<u16>,
    pub pasid: Option<u32>,
}

impl FaultRule {
    pub fn new(point: FaultPoint, action: FaultAction) -> Self {
        FaultRule {
            point,
            action,
            probability: 1.0,
            interval: 1,
            times: -1,
            skip: 0,
            devid: None,
            pasid: None,
        }
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            FaultAction::Drop => "drop".to_string(),
            FaultAction::Fail => "fail".to_string(),
            FaultAction::Delay(d) => format!("delay {}us", d.as_micros()),
        };
        write!(
            f,
            "{} {} p={} interval={} times={} skip={}",
            self.point.name(),
            action,
            self.probability,
            self.interval,
            self.times,
            self.skip
        )?;
        if let Some(d) = self.devid {
            write!(f, " devid={d:#06x}")?;
        }
        if let Some(p) = self.pasid {
            write!(f, " pasid={p}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Armed {
    rule: FaultRule,
    hits: AtomicU64,
    fired: AtomicU64,
    rng: AtomicU64,
}

/// The set of rules, checked at every point. With no rules the check is one
/// relaxed load.
#[derive(Debug, Default)]
pub struct FaultInjector {
    any: AtomicBool,
    rules: RwLock<Vec<Armed>>,
    injected: AtomicU64,
}

impl FaultInjector {
    pub fn add(&self, rule: FaultRule) {
        let seed =
            0x9e37_79b9_7f4a_7c15 ^ (rule.point as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
        self.rules.write().unwrap().push(Armed {
            rule,
            hits: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            rng: AtomicU64::new(seed),
        });
        self.any.store(true, Ordering::Release);
    }

    pub fn clear(&self) {
        self.rules.write().unwrap().clear();
        self.any.store(false, Ordering::Release);
    }

    pub fn rules(&self) -> Vec<FaultRule> {
        self.rules
            .read()
            .unwrap()
            .iter()
            .map(|a| a.rule.clone())
            .collect()
    }

    /// Times any rule fired.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Whether a rule fires at `point` for this device and PASID.
    pub fn check(
        &self,
        point: FaultPoint,
        devid: Option<u16>,
        pasid: Option<u32>,
    ) -> Option<FaultAction> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let rules = self.rules.read().unwrap();
        for a in rules.iter() {
            let r = &a.rule;
            if r.point != point
                || r.devid.is_some_and(|d| Some(d) != devid)
                || r.pasid.is_some_and(|p| Some(p) != pasid)
            {
                continue;
            }
            let hit = a.hits.fetch_add(1, Ordering::Relaxed);
            if hit < r.skip || (hit - r.skip) % r.interval.max(1) != 0 {
                continue;
            }
            if r.probability < 1.0 {
                // xorshift64*, one stream per rule: reproducible runs.
                let mut x = a.rng.load(Ordering::Relaxed);
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                a.rng.store(x, Ordering::Relaxed);
                let u = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
                if u >= r.probability {
                    continue;
                }
            }
            if r.times >= 0 && a.fired.fetch_add(1, Ordering::Relaxed) >= r.times as u64 {
                continue;
            }
            self.injected.fetch_add(1, Ordering::Relaxed);
            log::debug!("fault injected: {r}");
            return Some(r.action);
        }
        None
    }
}

/// Sleep for a `Delay` action; report whether the operation proceeds (a
/// delayed operation still happens).
pub fn apply_delay(action: Option<FaultAction>) -> Option<FaultAction> {
    match action {
        Some(FaultAction::Delay(d)) => {
            std::thread::sleep(d);
            None
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rules_no_faults() {
        let f = FaultInjector::default();
        assert_eq!(f.check(FaultPoint::WalkRead, None, None), None);
    }

    #[test]
    fn skip_interval_times() {
        let f = FaultInjector::default();
        f.add(FaultRule {
            skip: 2,
            interval: 3,
            times: 2,
            ..FaultRule::new(FaultPoint::AtcInvalidate, FaultAction::Drop)
        });
        let fired: Vec<bool> = (0..14)
            .map(|_| {
                f.check(FaultPoint::AtcInvalidate, Some(1), Some(1))
                    .is_some()
            })
            .collect();
        let want: Vec<bool> = (0..14).map(|i| i == 2 || i == 5).collect();
        assert_eq!(fired, want);
        assert_eq!(f.injected(), 2);
        assert_eq!(
            f.check(FaultPoint::WalkRead, None, None),
            None,
            "other points unaffected"
        );
    }

    #[test]
    fn filters_and_probability() {
        let f = FaultInjector::default();
        f.add(FaultRule {
            devid: Some(0x10),
            pasid: Some(3),
            ..FaultRule::new(FaultPoint::PriRequest, FaultAction::Fail)
        });
        assert_eq!(f.check(FaultPoint::PriRequest, Some(0x11), Some(3)), None);
        assert_eq!(f.check(FaultPoint::PriRequest, Some(0x10), Some(4)), None);
        assert_eq!(
            f.check(FaultPoint::PriRequest, Some(0x10), Some(3)),
            Some(FaultAction::Fail)
        );
        let g = FaultInjector::default();
        g.add(FaultRule {
            probability: 0.25,
            ..FaultRule::new(FaultPoint::IotlbFill, FaultAction::Drop)
        });
        let n = (0..4000)
            .filter(|_| g.check(FaultPoint::IotlbFill, None, None).is_some())
            .count();
        assert!((800..1200).contains(&n), "{n} of 4000 at p=0.25");
        g.clear();
        assert_eq!(g.check(FaultPoint::IotlbFill, None, None), None);
    }

    #[test]
    fn names_parse() {
        for p in FaultPoint::ALL {
            assert_eq!(p.name().parse::<FaultPoint>(), Ok(p));
        }
        assert!("nope"
            .parse::<FaultPoint>()
            .unwrap_err()
            .contains("atc_invalidate"));
    }
}
