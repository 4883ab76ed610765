//! The program a script flattens into (per-actor step lists, invalidations
//! expanded into IOMMU commands) and the footprints of steps, which decide
//! what the explorer may reorder.

use iommu_dev::{Command, FaultRule, SRange};

use super::{CW_GPA, DOMAIN_ID};
use crate::script::{CpuOp, DevOp, Hook, Range, Script, Step, Target};

/// Footprint resources, as bits of a u128.
pub mod res {
    /// Present bits, addresses and permissions of the page tables.
    pub const PT: u128 = 1 << 0;
    /// Accessed/Dirty bits (the walker sets them).
    pub const PT_AD: u128 = 1 << 1;
    /// IOTLB and walk cache.
    pub const IOTLB: u128 = 1 << 2;
    /// The command queue.
    pub const QUEUE: u128 = 1 << 3;
    pub fn atc(dev: usize) -> u128 {
        1 << (4 + dev)
    }
    pub const ATC_ALL: u128 = 0xff << 4;
    pub fn word(i: usize) -> u128 {
        1 << (16 + i)
    }
    pub const WORD_ALL: u128 = 0xffff_ffff << 16;
    pub fn data(page: usize) -> u128 {
        1 << (64 + page)
    }
    pub const DATA_ALL: u128 = !0u128 << 64;
}

/// What a step reads and writes. `c` are commuting updates: cache fills
/// and A/D updates by translations, which leave the same state and give the
/// same results in either order (the caches are far from full, a fill only
/// adds what a walk of the current tables yields, A/D bits are only set),
/// so two such updates do not conflict with each other, only with reads and
/// writes of the same resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fp {
    pub r: u128,
    pub w: u128,
    pub c: u128,
}

impl Fp {
    pub const NONE: Fp = Fp { r: 0, w: 0, c: 0 };

    pub(crate) fn rw(r: u128, w: u128) -> Fp {
        Fp { r: r | w, w, c: 0 }
    }

    /// Whether the two steps may not be swapped.
    pub fn conflicts(&self, o: &Fp) -> bool {
        self.w & (o.r | o.w | o.c) != 0
            || o.w & (self.r | self.c) != 0
            || self.c & o.r != 0
            || o.c & self.r != 0
    }
}

/// A CPU step after expansion of invalidations and hooks.
#[derive(Debug, Clone)]
pub enum CpuStep {
    Op(CpuOp),
    /// Post commands to the command buffer.
    Post {
        cmds: Vec<Cmd>,
        what: String,
    },
    /// Wait for the queue to drain (COMPLETION_WAIT done).
    Wait,
    /// A hook the notifier mode leaves without an invalidation.
    Disabled(String),
    /// The audit once the CPU sequence has finished.
    Audit,
}

#[derive(Debug, Clone)]
pub struct Cmd {
    pub cmd: Command,
    /// Which `inv#N` (0-based) it belongs to.
    pub inv: Option<usize>,
    pub text: String,
}

fn names(cmds: &[Cmd]) -> String {
    let mut v: Vec<&str> = Vec::new();
    for c in cmds {
        let n = c.text.split(' ').next().unwrap_or("");
        let n = n.strip_prefix("INVALIDATE_").unwrap_or(n);
        if v.last() != Some(&n) {
            v.push(n);
        }
    }
    v.join(", ")
}

/// A script flattened into per-actor step lists.
#[derive(Debug, Clone)]
pub struct Program {
    /// CPU steps with the script line they come from (the audit gets the
    /// last CPU line).
    pub cpu: Vec<(CpuStep, usize, String)>,
    /// Per device: ops with their script line.
    pub devs: Vec<Vec<(DevOp, usize)>>,
    /// Invalidations (`inv`, enabled hooks) in order: line and text.
    pub invs: Vec<(usize, String)>,
    pub faults: Vec<FaultRule>,
}

impl Program {
    pub fn new(s: &Script, extra_faults: &[FaultRule]) -> Program {
        let mut cpu = Vec::new();
        let mut devs = vec![Vec::new(); s.devices.len()];
        let mut invs = Vec::new();
        let mut last_cpu_line = 0;
        let range_of = |r: &Range| match *r {
            Range::All => SRange::EVERYTHING,
            Range::Pages { first, last } => SRange::covering(first, last | 0xfff),
        };
        let cw = |n: usize| Cmd {
            cmd: Command::CompletionWait {
                store: true,
                interrupt: false,
                flush: false,
                addr: CW_GPA,
                data: n as u64 + 1,
            },
            inv: None,
            text: "COMPLETION_WAIT".into(),
        };
        for l in &s.lines {
            let text = l
                .text
                .strip_prefix("cpu")
                .unwrap_or(&l.text)
                .trim()
                .to_string();
            match &l.step {
                Step::Dev { dev, ops } => devs[*dev].extend(ops.iter().map(|o| (*o, l.line))),
                Step::Cpu(op) => {
                    last_cpu_line = l.line;
                    let inv = |target: Target, range: &Range, pasid: Option<u32>, idx: usize| {
                        let mut v = Vec::new();
                        let pasid = pasid.unwrap_or(s.pasid);
                        let sr = range_of(range);
                        let rt = s.range_text(range);
                        if matches!(target, Target::Iommu | Target::Both) {
                            v.push(Cmd {
                                cmd: Command::InvalidateIommuPages {
                                    domain_id: DOMAIN_ID,
                                    pasid,
                                    gn: true,
                                    pde: true,
                                    range: sr,
                                },
                                inv: Some(idx),
                                text: format!("INVALIDATE_IOMMU_PAGES pasid {pasid} {rt}"),
                            });
                        }
                        if matches!(target, Target::Atc | Target::Both) {
                            for d in &s.devices {
                                v.push(Cmd {
                                    cmd: Command::InvalidateIotlbPages {
                                        devid: d.devid,
                                        pasid,
                                        gn: true,
                                        maxpend: 32,
                                        queue_id: d.devid,
                                        range: sr,
                                    },
                                    inv: Some(idx),
                                    text: format!(
                                        "INVALIDATE_IOTLB_PAGES {} pasid {pasid} {rt}",
                                        d.name
                                    ),
                                });
                            }
                        }
                        v
                    };
                    match op {
                        CpuOp::Inv {
                            target,
                            range,
                            pasid,
                            wait,
                        } => {
                            let idx = invs.len();
                            invs.push((l.line, text.clone()));
                            let mut cmds = inv(*target, range, *pasid, idx);
                            if *wait {
                                cmds.push(cw(idx));
                            }
                            let what = format!("inv#{} posted: {}", idx + 1, names(&cmds));
                            cpu.push((CpuStep::Post { cmds, what }, l.line, text.clone()));
                            if *wait {
                                cpu.push((CpuStep::Wait, l.line, text.clone()));
                            }
                        }
                        CpuOp::Sync => {
                            cpu.push((
                                CpuStep::Post {
                                    cmds: vec![cw(invs.len() + 1000)],
                                    what: "posted: COMPLETION_WAIT".into(),
                                },
                                l.line,
                                text.clone(),
                            ));
                            cpu.push((CpuStep::Wait, l.line, text.clone()));
                        }
                        CpuOp::Hook { hook, range } => {
                            let name = match hook {
                                Hook::Secondary => "secondary_tlbs",
                                Hook::Start => "range_start",
                                Hook::End => "range_end",
                            };
                            if s.notifier.enabled(*hook) {
                                let idx = invs.len();
                                invs.push((l.line, text.clone()));
                                let mut cmds = inv(Target::Both, range, None, idx);
                                cmds.push(cw(idx));
                                let what =
                                    format!("{name}: inv#{} posted: {}", idx + 1, names(&cmds));
                                cpu.push((CpuStep::Post { cmds, what }, l.line, text.clone()));
                                cpu.push((CpuStep::Wait, l.line, text.clone()));
                            } else {
                                cpu.push((
                                    CpuStep::Disabled(format!(
                                        "{name}: no flush in notifier mode {}",
                                        s.notifier.name()
                                    )),
                                    l.line,
                                    text.clone(),
                                ));
                            }
                        }
                        other => cpu.push((CpuStep::Op(other.clone()), l.line, text.clone())),
                    }
                }
            }
        }
        cpu.push((CpuStep::Audit, last_cpu_line, "audit".into()));
        let mut faults = s.faults.clone();
        faults.extend(extra_faults.iter().cloned());
        Program {
            cpu,
            devs,
            invs,
            faults,
        }
    }
}
