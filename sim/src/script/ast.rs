//! Ordering scripts: the syntax tree a parsed script becomes (findings,
//! notifier modes, CPU and device steps, the `Script` itself) and the limits
//! the simulator's footprints rely on.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use iommu_dev::FaultRule;

/// First VA handed to a VA name used without a `va` declaration.
pub const AUTO_VA_BASE: u64 = 0x7f00_0010_0000;
/// Most physical pages a script may name.
pub const MAX_PAGES: usize = 64;
/// Most VA words a script may read or write.
pub const MAX_WORDS: usize = 32;
/// Most device threads (each is an ATS endpoint).
pub const MAX_DEVICES: usize = 8;
/// First device id handed to an undeclared device.
pub const AUTO_DEVID: u16 = 0x10;

/// What can make a script UNSAFE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Oracle R1: a device access used a page the PTE no longer maps.
    R1,
    /// Oracle R2: a write through a stale writable translation.
    R2,
    /// Oracle R3: an access while the PTE is not present.
    R3,
    /// Oracle R4: a write while the leaf has D=0.
    R4,
    /// The audit after the CPU sequence found a cached entry the tables no
    /// longer support.
    StaleEntry,
    /// A device write the CPU never sees (later read, or the final state).
    LostWrite,
    /// A device read returned something other than the VA's current value.
    StaleRead,
    /// A device write into a page the kernel freed.
    FreedWrite,
    /// A device read from a page the kernel freed.
    FreedRead,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::R1,
        Kind::R2,
        Kind::R3,
        Kind::R4,
        Kind::StaleEntry,
        Kind::LostWrite,
        Kind::StaleRead,
        Kind::FreedWrite,
        Kind::FreedRead,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Kind::R1 => "R1",
            Kind::R2 => "R2",
            Kind::R3 => "R3",
            Kind::R4 => "R4",
            Kind::StaleEntry => "stale-entry",
            Kind::LostWrite => "lost-write",
            Kind::StaleRead => "stale-read",
            Kind::FreedWrite => "freed-write",
            Kind::FreedRead => "freed-read",
        }
    }

    /// Whether the finding fails a script that does not mention it.
    pub fn fails_by_default(&self) -> bool {
        !matches!(self, Kind::R2 | Kind::R3 | Kind::R4)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A word that names no finding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected a finding ({names}), found `{word}`",
    names = Kind::ALL.map(|k| k.name()).join(", "),
    word = .0
)]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownKind(s.into()))
    }
}

/// Which notifier hooks invalidate (the guest module's `notifier_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notifier {
    pub secondary: bool,
    pub start: bool,
    pub end: bool,
}

impl Notifier {
    pub const MODES: [&'static str; 7] = [
        "auto",
        "secondary",
        "start",
        "end_only",
        "start_end",
        "all",
        "none",
    ];

    pub fn parse(s: &str) -> Option<Notifier> {
        let (secondary, start, end) = match s {
            "auto" | "secondary" => (true, false, false),
            "start" => (false, true, false),
            "end_only" => (false, false, true),
            "start_end" => (false, true, true),
            "all" => (true, true, true),
            "none" => (false, false, false),
            _ => return None,
        };
        Some(Notifier {
            secondary,
            start,
            end,
        })
    }

    pub fn enabled(&self, h: Hook) -> bool {
        match h {
            Hook::Secondary => self.secondary,
            Hook::Start => self.start,
            Hook::End => self.end,
        }
    }

    pub fn name(&self) -> &'static str {
        match (self.secondary, self.start, self.end) {
            (true, false, false) => "secondary",
            (false, true, false) => "start",
            (false, false, true) => "end_only",
            (false, true, true) => "start_end",
            (true, true, true) => "all",
            (false, false, false) => "none",
            _ => "custom",
        }
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::parse("secondary").unwrap()
    }
}

/// An mmu_notifier hook shorthand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `->arch_invalidate_secondary_tlbs` (`->invalidate_range` before 6.6).
    Secondary,
    /// `->invalidate_range_start`.
    Start,
    /// `->invalidate_range_end`.
    End,
}

impl Hook {
    pub fn word(&self) -> &'static str {
        match self {
            Hook::Secondary => "secondary",
            Hook::Start => "start",
            Hook::End => "end",
        }
    }
}

/// Which caches an invalidation targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// INVALIDATE_IOMMU_PAGES (IOTLB and walk cache, GN=1 PDE=1).
    Iommu,
    /// INVALIDATE_IOTLB_PAGES to every endpoint (device ATCs).
    Atc,
    /// Both, IOMMU first.
    Both,
}

/// A range of VAs: pages `first..=last`, or everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Pages { first: u64, last: u64 },
    All,
}

/// Leaf permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub write: bool,
    pub dirty: bool,
}

/// What a non-present entry stands for (only the timeline cares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonPresent {
    None,
    Swap,
    Migration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuOp {
    /// A fresh mapping: the VA's contents become the page's.
    Map {
        va: u64,
        page: usize,
        perms: Perms,
    },
    /// Replace the PTE (COW, KSM, migration): the VA keeps its contents.
    Set {
        va: u64,
        page: usize,
        perms: Perms,
    },
    Clear {
        va: u64,
        kind: NonPresent,
    },
    Protect {
        va: u64,
        write: bool,
    },
    Free {
        page: usize,
    },
    /// Someone else allocates the page and fills it with `value`.
    Reuse {
        page: usize,
        value: u64,
    },
    Copy {
        from: usize,
        to: usize,
    },
    Write {
        va: u64,
        value: u64,
    },
    Read {
        va: u64,
    },
    /// Stop the CPU sequence here unless the pages are identical (KSM).
    Identical {
        a: usize,
        b: usize,
    },
    Inv {
        target: Target,
        range: Range,
        pasid: Option<u32>,
        wait: bool,
    },
    /// COMPLETION_WAIT: wait for every command posted so far.
    Sync,
    Hook {
        hook: Hook,
        range: Range,
    },
    Note(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevOp {
    Translate { va: u64 },
    Read { va: u64 },
    Write { va: u64, value: u64 },
}

impl DevOp {
    pub fn va(&self) -> u64 {
        match *self {
            DevOp::Translate { va } | DevOp::Read { va } | DevOp::Write { va, .. } => va,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Cpu(CpuOp),
    /// A device line: one op, or a loop unrolled.
    Dev {
        dev: usize,
        ops: Vec<DevOp>,
    },
}

/// One step line in literal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub line: usize,
    /// The line as written (comment stripped).
    pub text: String,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub devid: u16,
}

/// The expected outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Safe,
    /// Unsafe, and each of these findings occurs in some interleaving.
    Unsafe(Vec<Kind>),
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Safe => f.write_str("safe"),
            Expect::Unsafe(k) => {
                f.write_str("unsafe")?;
                for k in k {
                    write!(f, " {k}")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub path: String,
    pub title: Option<String>,
    pub notifier: Notifier,
    pub pasid: u32,
    /// Named VAs (page-aligned).
    pub vas: Vec<(String, u64)>,
    /// Named physical pages with their initial 64-bit fill pattern.
    pub pages: Vec<(String, u64)>,
    /// Mappings in place before any step.
    pub init_maps: Vec<(u64, usize, Perms)>,
    pub devices: Vec<Device>,
    /// Every 8-byte VA word a step reads or writes (sorted).
    pub words: Vec<u64>,
    pub lines: Vec<Line>,
    pub retries: u32,
    pub faults: Vec<FaultRule>,
    pub fail_on: BTreeSet<Kind>,
    pub allow: BTreeSet<Kind>,
    pub expect: Option<Expect>,
    pub expect_literal: Option<Expect>,
    /// `expect redundant inv#N ...` (1-based), or `none`.
    pub expect_redundant: Option<Vec<usize>>,
}

impl Script {
    /// Findings that make the script UNSAFE.
    pub fn failing(&self) -> BTreeSet<Kind> {
        let mut s: BTreeSet<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| k.fails_by_default())
            .collect();
        s.extend(self.fail_on.iter().copied());
        for k in &self.allow {
            s.remove(k);
        }
        // What a script expects to find always counts.
        for e in [&self.expect, &self.expect_literal].into_iter().flatten() {
            if let Expect::Unsafe(ks) = e {
                s.extend(ks.iter().copied());
            }
        }
        s
    }

    pub fn va_name(&self, va: u64) -> String {
        let base = va & !0xfff;
        match self.vas.iter().find(|(_, v)| *v == base) {
            Some((n, _)) if va & 0xfff == 0 => n.clone(),
            Some((n, _)) => format!("{n}+{:#x}", va & 0xfff),
            None => format!("{va:#x}"),
        }
    }

    pub fn page_name(&self, page: usize) -> &str {
        &self.pages[page].0
    }

    pub fn range_text(&self, r: &Range) -> String {
        match *r {
            Range::All => "all".into(),
            Range::Pages { first, last } if first == last => self.va_name(first),
            Range::Pages { first, last } => {
                format!("{}..{}", self.va_name(first), self.va_name(last))
            }
        }
    }
}
