//! Named fault-injection points. A rule at a point can drop, delay or fail the
//! operation, or at the invalidation points plant a device bug (defer it past
//! its completion, narrow its range, apply it to another PASID), filtered like
//! Linux's fault-injection knobs (probability, interval, times, skip the first
//! N as with fail-nth). docs/fault-injection.md lists every point and action.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

crate::named_enum! {
    /// Where a rule applies.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum FaultPoint {
        /// A page-table read by the walker (fail: PAGE_TAB_HARDWARE_ERROR).
        WalkRead => "walk_read",
        /// Filling the IOTLB after a walk (drop: not cached).
        IotlbFill => "iotlb_fill",
        /// INVALIDATE_IOMMU_PAGES / _ALL on the IOTLB and walk cache (drop: nothing
        /// removed; defer, narrow, other_pasid: see [`FaultAction`]).
        IotlbInvalidate => "iotlb_invalidate",
        /// The walk-cache part of INVALIDATE_IOMMU_PAGES with PDE=1 (drop: the
        /// walk cache keeps the upper-level entries; the IOTLB is still flushed).
        PwcInvalidate => "pwc_invalidate",
        /// INVALIDATE_DEVTAB_ENTRY (drop: the cached DTE stays).
        DteInvalidate => "dte_invalidate",
        /// Any command before it executes (drop: skipped; fail: illegal).
        Command => "command",
        /// An endpoint storing a completion in its ATC (drop: not cached).
        AtcFill => "atc_fill",
        /// INVALIDATE_IOTLB_PAGES reaching an endpoint's ATC (drop: ignored and
        /// completed anyway, a broken device; fail: no completion, IOTLB_INV_TIMEOUT).
        AtcInvalidate => "atc_invalidate",
        /// A PRI page request leaving the endpoint (drop: lost).
        PriRequest => "pri_request",
        /// A PRG response reaching the endpoint (drop: lost).
        PriResponse => "pri_response",
        /// COMPLETION_WAIT (defer: the wait stores and completes although the
        /// invalidations ahead of it in the batch take effect only afterwards).
        CompletionWait => "completion_wait",
    }
}

impl FaultPoint {
    /// The actions that mean something at this point (others would be
    /// silently ignored, so a config naming one is an error).
    pub fn actions(&self) -> &'static [&'static str] {
        // `fail` where the operation has no failure of its own is as `drop`.
        match self {
            FaultPoint::IotlbInvalidate => {
                &["drop", "fail", "delay", "defer", "narrow", "other_pasid"]
            }
            FaultPoint::AtcInvalidate => {
                &["drop", "delay", "fail", "defer", "narrow", "other_pasid"]
            }
            FaultPoint::CompletionWait => &["defer", "delay"],
            FaultPoint::PwcInvalidate
            | FaultPoint::DteInvalidate
            | FaultPoint::IotlbFill
            | FaultPoint::AtcFill
            | FaultPoint::PriResponse => &["drop", "fail", "delay"],
            FaultPoint::WalkRead => &["fail", "delay"],
            FaultPoint::Command => &["drop", "fail", "delay"],
            FaultPoint::PriRequest => &["drop", "delay"],
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
    /// The invalidation is applied only after the batch it came in has
    /// completed (its COMPLETION_WAIT already stored): at the start of the
    /// next COMMANDS batch. At `completion_wait`, every IOMMU and ATC
    /// invalidation since the previous wait is deferred so.
    Defer,
    /// An S=1 range decoded one size too small: the lower half of the
    /// range is invalidated (§4.2). A single page (S=0) is unaffected.
    Narrow,
    /// The invalidation is applied to PASID ^ 1 instead of its own.
    OtherPasid,
}

impl FaultAction {
    pub fn name(&self) -> &'static str {
        match self {
            FaultAction::Drop => "drop",
            FaultAction::Delay(_) => "delay",
            FaultAction::Fail => "fail",
            FaultAction::Defer => "defer",
            FaultAction::Narrow => "narrow",
            FaultAction::OtherPasid => "other_pasid",
        }
    }

    /// Parse an action name; `delay` needs `delay_us`.
    pub fn parse(name: &str, delay_us: Option<u64>) -> Result<Self, FaultError> {
        let a = match (name, delay_us) {
            ("delay", Some(us)) if us <= 60_000_000 => {
                return Ok(FaultAction::Delay(Duration::from_micros(us)))
            }
            ("delay", Some(_)) => return Err(FaultError::DelayTooLong),
            ("delay", None) => return Err(FaultError::DelayMissing),
            ("drop", _) => FaultAction::Drop,
            ("fail", _) => FaultAction::Fail,
            ("defer", _) => FaultAction::Defer,
            ("narrow", _) => FaultAction::Narrow,
            ("other_pasid", _) => FaultAction::OtherPasid,
            (other, _) => return Err(FaultError::UnknownAction(other.to_string())),
        };
        if delay_us.is_some() {
            return Err(FaultError::DelayNotAllowed);
        }
        Ok(a)
    }
}

/// Why a fault rule is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("unknown action '{0}' (expected drop, delay, fail, defer, narrow or other_pasid)")]
    UnknownAction(String),
    #[error("required with action = \"delay\"")]
    DelayMissing,
    #[error("only allowed with action = \"delay\"")]
    DelayNotAllowed,
    #[error("must be at most 60000000")]
    DelayTooLong,
    #[error("action '{action}' has no meaning at point '{point}' (allowed: {allowed})")]
    NotAtPoint {
        action: &'static str,
        point: &'static str,
        allowed: String,
    },
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
    /// Whether the action means something at the point.
    pub fn validate(&self) -> Result<(), FaultError> {
        let allowed = self.point.actions();
        if allowed.contains(&self.action.name()) {
            return Ok(());
        }
        Err(FaultError::NotAtPoint {
            action: self.action.name(),
            point: self.point.name(),
            allowed: allowed.join(", "),
        })
    }

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
            FaultAction::Delay(d) => format!("delay {}us", d.as_micros()),
            a => a.name().to_string(),
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

    /// Whether any rule names `point` (without counting a hit).
    pub fn watches(&self, point: FaultPoint) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .rules
                .read()
                .unwrap()
                .iter()
                .any(|a| a.rule.point == point)
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
    fn actions_parse_and_validate_per_point() {
        for n in ["drop", "fail", "defer", "narrow", "other_pasid"] {
            assert_eq!(FaultAction::parse(n, None).unwrap().name(), n);
        }
        assert_eq!(
            FaultAction::parse("delay", Some(5)),
            Ok(FaultAction::Delay(Duration::from_micros(5)))
        );
        assert_eq!(
            FaultAction::parse("delay", None),
            Err(FaultError::DelayMissing)
        );
        assert_eq!(
            FaultAction::parse("drop", Some(1)),
            Err(FaultError::DelayNotAllowed)
        );
        assert!(matches!(
            FaultAction::parse("explode", None),
            Err(FaultError::UnknownAction(_))
        ));
        let ok = FaultRule::new(FaultPoint::AtcInvalidate, FaultAction::Narrow);
        assert_eq!(ok.validate(), Ok(()));
        let bad = FaultRule::new(FaultPoint::WalkRead, FaultAction::Narrow);
        assert!(matches!(
            bad.validate(),
            Err(FaultError::NotAtPoint {
                point: "walk_read",
                ..
            })
        ));
        assert!(
            FaultRule::new(FaultPoint::CompletionWait, FaultAction::Drop)
                .validate()
                .is_err(),
            "a dropped COMPLETION_WAIT would hang the driver, not model a device bug"
        );
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
