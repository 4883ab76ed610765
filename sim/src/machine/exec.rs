//! The state of one execution of a [`Program`] on a [`Backend`]: each
//! actor's next step and its footprint, the steps themselves with their
//! timeline text, the data checks and the findings, and the [`ExecError`]
//! that makes an execution fail.

use std::collections::VecDeque;

use iommu_dev::oracle::Rule;
use iommu_dev::walker::{PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US};
use iommu_dev::{AccessError, AtsCompletion, Command, Finding, Source};

use super::program::{res, Cmd, CpuStep, Fp, Program};
use super::{Backend, BackendError, Model, ADDR_MASK, CPU, END, IOMMU, MIGRATION_PTE, SWAP_PTE};
use crate::script::{CpuOp, DevOp, Kind, NonPresent, Perms, Script};

/// What makes an execution fail: the script asks for something impossible,
/// or the backend fails (a failure, not a finding; the last one is kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// A CPU `read` or `write` of a VA no PTE maps.
    #[error("cpu {} unmapped {va}", if *.write { "write to" } else { "read of" })]
    Unmapped { write: bool, va: String },
    #[error("reset: {0}")]
    Reset(BackendError),
    #[error("audit: {0}")]
    Audit(BackendError),
    /// The IOMMU step could not execute a command.
    #[error("{cmd}: {error}")]
    Command { cmd: String, error: BackendError },
    /// A device's translation request failed (not a translation fault).
    #[error("{dev}: translate {va}: {error}")]
    Translate {
        dev: String,
        va: String,
        error: AccessError,
    },
    /// A device's read or write failed (neither a miss nor a fault).
    #[error("{dev}: {what}: {error}")]
    Access {
        dev: String,
        what: String,
        error: AccessError,
    },
}

/// Who wrote a VA word's current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Init,
    Cpu,
    Dev(usize),
}

/// A finding in one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub detail: String,
}

/// One executed step.
#[derive(Debug, Clone)]
pub struct Rec {
    pub actor: usize,
    pub fp: Fp,
    pub text: String,
    pub findings: Vec<Found>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// The access missed in the ATC: translate again, then retry.
    Retranslate(u32),
    Retry(u32),
}

#[derive(Debug, Clone, Copy)]
struct DevState {
    pc: usize,
    mode: Mode,
}

/// The state of one execution.
pub struct Exec<'p, B: Backend = Model> {
    pub prog: &'p Program,
    pub script: &'p Script,
    /// What the steps run on.
    pub backend: B,
    cpu_pc: usize,
    queue: VecDeque<Cmd>,
    devs: Vec<DevState>,
    freed: u64,
    expected: Vec<Option<(u64, Writer)>>,
    /// Per invalidation: entries removed in this execution.
    pub inv_removed: Vec<usize>,
    pub log: Vec<Rec>,
    /// A script error (a CPU access to an unmapped VA, a model error).
    pub error: Option<ExecError>,
}

impl<B: Backend> std::fmt::Debug for Exec<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("cpu_pc", &self.cpu_pc)
            .field("steps", &self.log.len())
            .finish()
    }
}

fn leaf_bits(perms: Perms) -> u64 {
    PTE_P
        | PTE_US
        | PTE_A
        | if perms.write { PTE_RW } else { 0 }
        | if perms.dirty { PTE_D } else { 0 }
}

impl<'p> Exec<'p, Model> {
    /// An execution on the model (with the script's and `prog`'s faults).
    pub fn new(script: &'p Script, prog: &'p Program) -> Exec<'p, Model> {
        Exec::with_backend(script, prog, Model::new(script, &prog.faults))
    }

    /// Run a schedule (actor per step) from scratch.
    pub fn replay(script: &'p Script, prog: &'p Program, sched: &[usize]) -> Exec<'p, Model> {
        let mut e = Exec::new(script, prog);
        for &a in sched {
            e.step(a);
        }
        e
    }
}

impl<'p, B: Backend> Exec<'p, B> {
    /// An execution on `backend`, in the script's initial state.
    pub fn with_backend(script: &'p Script, prog: &'p Program, backend: B) -> Exec<'p, B> {
        let mut e = Exec {
            prog,
            script,
            backend,
            cpu_pc: 0,
            queue: VecDeque::new(),
            devs: Vec::new(),
            freed: 0,
            expected: Vec::new(),
            inv_removed: Vec::new(),
            log: Vec::new(),
            error: None,
        };
        e.setup();
        e
    }

    /// Back to the initial state of the script (cheaper than `new`).
    pub fn reset(&mut self) {
        let r = self.backend.reset();
        self.setup();
        if let Err(e) = r {
            self.error = Some(ExecError::Reset(e));
        }
    }

    fn setup(&mut self) {
        let (script, prog) = (self.script, self.prog);
        for (i, (_, v)) in script.pages.iter().enumerate() {
            if *v != 0 {
                self.backend.fill(i, *v);
            }
        }
        self.cpu_pc = 0;
        self.queue.clear();
        self.devs = vec![
            DevState {
                pc: 0,
                mode: Mode::Normal
            };
            script.devices.len()
        ];
        self.freed = 0;
        self.expected = vec![None; script.words.len()];
        self.inv_removed = vec![0; prog.invs.len()];
        self.log.clear();
        self.error = None;
        for &(va, page, perms) in &script.init_maps {
            self.map(va, page, perms, true);
        }
    }

    /// Replay a schedule (actor per step) from the initial state.
    pub fn replay_into(&mut self, sched: &[usize]) {
        self.reset();
        for &a in sched {
            self.step(a);
        }
    }

    pub fn actors(&self) -> usize {
        2 + self.devs.len()
    }

    pub fn actor_name(&self, a: usize) -> &str {
        match a {
            CPU => "cpu",
            IOMMU => "iommu",
            END => "end",
            d => &self.script.devices[d - 2].name,
        }
    }

    fn word_idx(&self, va: u64) -> usize {
        self.script
            .words
            .binary_search(&va)
            .expect("VA word collected by the parser")
    }

    fn page_of(&self, pa: u64) -> Option<usize> {
        self.backend
            .page_of(pa)
            .filter(|&p| p < self.script.pages.len())
    }

    fn page_text(&self, pa: u64) -> String {
        match self.page_of(pa) {
            Some(p) => self.script.page_name(p).to_string(),
            None => format!("{pa:#x}"),
        }
    }

    fn pte_text(&self, pte: u64) -> String {
        if pte & PTE_P == 0 {
            return match pte {
                0 => "none".into(),
                SWAP_PTE => "swap entry".into(),
                MIGRATION_PTE => "migration entry".into(),
                _ => format!("not present ({pte:#x})"),
            };
        }
        format!(
            "{} {}{}",
            self.page_text(pte & ADDR_MASK),
            if pte & PTE_RW != 0 { "rw" } else { "ro" },
            if pte & PTE_D != 0 { " dirty" } else { "" }
        )
    }

    fn pte(&mut self, va: u64) -> u64 {
        self.backend.pte(va)
    }

    /// What the CPU's tables map `va` to now.
    fn cpu_pa(&mut self, va: u64) -> Option<u64> {
        let e = self.pte(va);
        (e & PTE_P != 0).then_some((e & ADDR_MASK) | (va & 0xfff))
    }

    fn set_pte(&mut self, va: u64, v: u64) {
        self.backend.set_pte(va, v);
    }

    fn map(&mut self, va: u64, page: usize, perms: Perms, fresh: bool) {
        let pa = self.backend.page_pa(page);
        self.set_pte(va, pa | leaf_bits(perms));
        self.freed &= !(1 << page);
        if fresh {
            for (i, w) in self.script.words.iter().enumerate() {
                if *w & !0xfff == va {
                    let v = self.backend.load(pa | (w & 0xfff));
                    self.expected[i] = Some((v, Writer::Init));
                }
            }
        }
    }

    fn load(&mut self, gpa: u64) -> u64 {
        self.backend.load(gpa)
    }

    fn cpu_next(&self) -> Option<&'p (CpuStep, usize, String)> {
        self.prog.cpu.get(self.cpu_pc)
    }

    /// The footprint of `actor`'s next step, or None when it cannot move.
    pub fn next_fp(&mut self, actor: usize) -> Option<Fp> {
        match actor {
            CPU => {
                let (step, _, _) = self.cpu_next()?;
                Some(match step {
                    CpuStep::Op(op) => self.cpu_fp(op),
                    CpuStep::Post { .. } => Fp::rw(0, res::QUEUE),
                    CpuStep::Wait => {
                        if !self.queue.is_empty() {
                            return None;
                        }
                        Fp::rw(res::QUEUE, 0)
                    }
                    CpuStep::Disabled(_) => Fp::NONE,
                    CpuStep::Audit => Fp::rw(res::PT | res::PT_AD | res::IOTLB | res::ATC_ALL, 0),
                })
            }
            IOMMU => {
                let c = self.queue.front()?;
                Some(match c.cmd {
                    Command::InvalidateIommuPages { .. } => Fp::rw(0, res::QUEUE | res::IOTLB),
                    Command::InvalidateIotlbPages { devid, .. } => {
                        let d = self
                            .script
                            .devices
                            .iter()
                            .position(|x| x.devid == devid)
                            .map_or(res::ATC_ALL, res::atc);
                        Fp::rw(0, res::QUEUE | d)
                    }
                    _ => Fp::rw(0, res::QUEUE),
                })
            }
            a => {
                let d = a - 2;
                let st = self.devs[d];
                let (op, _) = self.prog.devs[d].get(st.pc)?;
                let atc = res::atc(d);
                Some(match (op, st.mode) {
                    (DevOp::Translate { .. }, _) | (_, Mode::Retranslate(_)) => Fp {
                        r: res::PT | atc,
                        w: atc,
                        c: res::PT_AD | res::IOTLB,
                    },
                    (DevOp::Read { va }, _) => Fp::rw(
                        atc | res::PT | res::DATA_ALL | res::word(self.word_idx(*va)),
                        0,
                    ),
                    (DevOp::Write { va, .. }, _) => Fp::rw(
                        atc | res::PT | res::PT_AD,
                        res::DATA_ALL | res::word(self.word_idx(*va)),
                    ),
                })
            }
        }
    }

    fn cpu_fp(&mut self, op: &CpuOp) -> Fp {
        let words_in = |s: &Script, va: u64| {
            s.words
                .iter()
                .enumerate()
                .filter(|(_, w)| **w & !0xfff == va)
                .fold(0u128, |m, (i, _)| m | res::word(i))
        };
        match *op {
            CpuOp::Map { va, page, .. } => Fp::rw(
                res::PT | res::PT_AD,
                res::PT | res::PT_AD | res::data(page) | words_in(self.script, va),
            ),
            CpuOp::Set { page, .. } => Fp::rw(0, res::PT | res::PT_AD | res::data(page)),
            CpuOp::Clear { .. } | CpuOp::Protect { .. } => Fp::rw(0, res::PT | res::PT_AD),
            CpuOp::Free { page } | CpuOp::Reuse { page, .. } => Fp::rw(0, res::data(page)),
            CpuOp::Copy { from, to } => Fp::rw(res::data(from), res::data(to)),
            CpuOp::Identical { a, b } => Fp::rw(res::data(a) | res::data(b), 0),
            CpuOp::Write { va, .. } | CpuOp::Read { va } => {
                let page = self
                    .cpu_pa(va)
                    .and_then(|pa| self.page_of(pa))
                    .map_or(res::DATA_ALL, res::data);
                let w = res::word(self.word_idx(va));
                if matches!(op, CpuOp::Write { .. }) {
                    Fp::rw(res::PT, page | w)
                } else {
                    Fp::rw(res::PT | page | w, 0)
                }
            }
            CpuOp::Note(_) => Fp::NONE,
            CpuOp::Inv { .. } | CpuOp::Sync | CpuOp::Hook { .. } => {
                unreachable!("expanded by Program::new")
            }
        }
    }

    /// Whether every actor is done.
    pub fn done(&mut self) -> bool {
        (0..self.actors()).all(|a| self.next_fp(a).is_none())
    }

    /// Execute one step of `actor` (which must be able to move).
    pub fn step(&mut self, actor: usize) {
        let fp = self.next_fp(actor).expect("actor can move");
        let mut findings = Vec::new();
        let text = match actor {
            CPU => self.cpu_step(&mut findings),
            IOMMU => self.iommu_step(),
            a => self.dev_step(a - 2, &mut findings),
        };
        self.log.push(Rec {
            actor,
            fp,
            text,
            findings,
        });
    }

    fn cpu_step(&mut self, out: &mut Vec<Found>) -> String {
        let (step, _, text) = self.cpu_next().expect("cpu step");
        self.cpu_pc += 1;
        match step {
            CpuStep::Op(op) => self.cpu_op(op, text, out),
            CpuStep::Post { cmds, what } => {
                self.queue.extend(cmds.iter().cloned());
                format!("{text}  [{what}]")
            }
            CpuStep::Wait => "  (COMPLETION_WAIT done)".into(),
            CpuStep::Disabled(why) => format!("{text}  [{why}]"),
            CpuStep::Audit => {
                match self.backend.audit(self.script.pasid) {
                    Ok(fs) => {
                        for f in fs {
                            out.push(Found {
                                kind: Kind::StaleEntry,
                                detail: self.stale_text(&f),
                            })
                        }
                    }
                    Err(e) => self.error = Some(ExecError::Audit(e)),
                }
                "audit  [CPU sequence done]".into()
            }
        }
    }

    fn stale_text(&self, f: &Finding) -> String {
        let src = match f.source {
            Source::Atc => {
                let name = self
                    .script
                    .devices
                    .iter()
                    .find(|d| d.devid == f.devid)
                    .map_or("?", |d| d.name.as_str());
                format!("{name}'s ATC")
            }
            Source::Iotlb => "the IOTLB".into(),
            Source::WalkCache => "the walk cache".into(),
        };
        if f.source == Source::WalkCache {
            return format!(
                "{src} holds an entry for {} the tables no longer have",
                self.script.va_name(f.va)
            );
        }
        format!(
            "{src} still maps {} -> {}, but the PTE is {}",
            self.script.va_name(f.va),
            self.page_text(f.cached_pa),
            self.pte_text(f.current_pte)
        )
    }

    fn cpu_op(&mut self, op: &CpuOp, text: &str, out: &mut Vec<Found>) -> String {
        let s = self.script;
        match *op {
            CpuOp::Map { va, page, perms } => self.map(va, page, perms, true),
            CpuOp::Set { va, page, perms } => self.map(va, page, perms, false),
            CpuOp::Clear { va, kind } => {
                let v = match kind {
                    NonPresent::None => 0,
                    NonPresent::Swap => SWAP_PTE,
                    NonPresent::Migration => MIGRATION_PTE,
                };
                self.set_pte(va, v);
            }
            CpuOp::Protect { va, write } => {
                let e = self.pte(va);
                let n = if write { e | PTE_RW } else { e & !PTE_RW };
                self.set_pte(va, n);
            }
            CpuOp::Free { page } => self.freed |= 1 << page,
            CpuOp::Reuse { page, value } => {
                self.freed |= 1 << page;
                self.backend.fill(page, value);
            }
            CpuOp::Copy { from, to } => self.backend.copy(from, to),
            CpuOp::Identical { a, b } => {
                if !self.backend.identical(a, b) {
                    // Skip to the audit.
                    self.cpu_pc = self.prog.cpu.len() - 1;
                    return format!("{text}  [differ: the CPU sequence stops here]");
                }
                return format!("{text}  [identical]");
            }
            CpuOp::Write { va, value } => {
                let Some(pa) = self.cpu_pa(va) else {
                    self.error = Some(ExecError::Unmapped {
                        write: true,
                        va: s.va_name(va),
                    });
                    return format!("{text}  [ERROR: not mapped]");
                };
                self.backend.store(pa, value);
                let i = self.word_idx(va);
                self.expected[i] = Some((value, Writer::Cpu));
                return format!("{text}  [{}]", self.page_text(pa));
            }
            CpuOp::Read { va } => {
                let Some(pa) = self.cpu_pa(va) else {
                    self.error = Some(ExecError::Unmapped {
                        write: false,
                        va: s.va_name(va),
                    });
                    return format!("{text}  [ERROR: not mapped]");
                };
                let v = self.load(pa);
                let i = self.word_idx(va);
                if let Some((want, Writer::Dev(d))) = self.expected[i] {
                    if v != want {
                        out.push(Found {
                            kind: Kind::LostWrite,
                            detail: format!(
                                "the CPU reads {} = {v:#x} from {}, but {} last wrote {want:#x}",
                                s.va_name(va),
                                self.page_text(pa),
                                s.devices[d].name
                            ),
                        });
                    }
                }
                return format!("{text}  [= {v:#x} from {}]", self.page_text(pa));
            }
            CpuOp::Note(_) => {}
            CpuOp::Inv { .. } | CpuOp::Sync | CpuOp::Hook { .. } => unreachable!(),
        }
        text.to_string()
    }

    fn iommu_step(&mut self) -> String {
        let c = self.queue.pop_front().expect("queued command");
        let n = match self.backend.execute(&c.cmd) {
            Ok(n) => n,
            Err(e) => {
                let text = format!("iommu: {}: ERROR {e}", c.text);
                self.error = Some(ExecError::Command {
                    cmd: c.text,
                    error: e,
                });
                return text;
            }
        };
        match (c.inv, n) {
            (Some(i), Some(n)) => {
                self.inv_removed[i] += n;
                format!("iommu: {} (removed {n})", c.text)
            }
            _ => format!("iommu: {}", c.text),
        }
    }

    fn dev_step(&mut self, d: usize, out: &mut Vec<Found>) -> String {
        let s = self.script;
        let name = &s.devices[d].name;
        let st = self.devs[d];
        let (op, _) = self.prog.devs[d][st.pc];
        let va = op.va();
        let vn = s.va_name(va);
        let translate = |e: &mut Self| e.backend.translate(d, va & !0xfff);
        let translate_error = |error| ExecError::Translate {
            dev: name.clone(),
            va: vn.clone(),
            error,
        };
        let comp_text = |e: &Self, c: &AtsCompletion| {
            if c.is_fault() {
                "fault (not present)".to_string()
            } else {
                format!(
                    "{} {}",
                    e.page_text(c.pa_base),
                    if c.w { "rw" } else { "ro" }
                )
            }
        };
        match (op, st.mode) {
            (DevOp::Translate { .. }, _) => {
                self.devs[d].pc += 1;
                match translate(self) {
                    Ok(c) => format!("{name}: translate {vn} -> {}", comp_text(self, &c)),
                    Err(e) => {
                        self.error = Some(translate_error(e));
                        format!("{name}: translate {vn}: ERROR {e}")
                    }
                }
            }
            (_, Mode::Retranslate(n)) => {
                let write = matches!(op, DevOp::Write { .. });
                match translate(self) {
                    Ok(c) if c.allows(write) => {
                        self.devs[d].mode = Mode::Retry(n);
                        format!("{name}: (miss) translate {vn} -> {}", comp_text(self, &c))
                    }
                    Ok(c) => {
                        self.devs[d] = DevState {
                            pc: st.pc + 1,
                            mode: Mode::Normal,
                        };
                        format!(
                            "{name}: (miss) translate {vn} -> {}: the {} faults",
                            comp_text(self, &c),
                            if write { "write" } else { "read" }
                        )
                    }
                    Err(e) => {
                        self.error = Some(translate_error(e));
                        format!("{name}: translate {vn}: ERROR {e}")
                    }
                }
            }
            (DevOp::Read { .. } | DevOp::Write { .. }, Mode::Normal | Mode::Retry(_)) => {
                let attempt = match st.mode {
                    Mode::Retry(n) => n,
                    _ => 0,
                };
                self.access(d, op, attempt, out)
            }
        }
    }

    fn access(&mut self, d: usize, op: DevOp, attempt: u32, out: &mut Vec<Found>) -> String {
        let s = self.script;
        let dev = &s.devices[d];
        let name = &dev.name;
        let pc = self.devs[d].pc;
        let va = op.va();
        let vn = s.va_name(va);
        let (r, what) = match op {
            DevOp::Read { .. } => (self.backend.access(d, va, None), format!("read {vn}")),
            DevOp::Write { value, .. } => (
                self.backend.access(d, va, Some(value)),
                format!("write {vn} = {value:#x}"),
            ),
            DevOp::Translate { .. } => unreachable!(),
        };
        let (c, v) = match r {
            Ok(x) => x,
            Err(AccessError::AtcMiss { .. }) => {
                if attempt < s.retries {
                    self.devs[d].mode = Mode::Retranslate(attempt + 1);
                    return format!("{name}: {what}: ATC miss");
                }
                self.devs[d] = DevState {
                    pc: pc + 1,
                    mode: Mode::Normal,
                };
                return format!("{name}: {what}: ATC miss again, gives up");
            }
            Err(AccessError::Fault { .. }) => {
                // A device that translates on a miss itself: the
                // translation faulted (PRI is off), as a retranslation would.
                self.devs[d] = DevState {
                    pc: pc + 1,
                    mode: Mode::Normal,
                };
                return format!("{name}: {what}: the translation faults");
            }
            Err(e) => {
                self.error = Some(ExecError::Access {
                    dev: name.clone(),
                    what: what.clone(),
                    error: e,
                });
                self.devs[d] = DevState {
                    pc: pc + 1,
                    mode: Mode::Normal,
                };
                return format!("{name}: {what}: ERROR {e}");
            }
        };
        self.devs[d] = DevState {
            pc: pc + 1,
            mode: Mode::Normal,
        };
        let pa = c.pa_base | (va & ((1u64 << c.size_log2) - 1));
        let page = self.page_of(pa);
        let ptext = self.page_text(pa);
        for f in self.backend.oracle() {
            let kind = match f.rule {
                Rule::StalePage => Kind::R1,
                Rule::StaleWrite => Kind::R2,
                Rule::AfterUnmap => Kind::R3,
                Rule::WriteWithoutDirty => Kind::R4,
                Rule::Stale => Kind::StaleEntry,
            };
            let why = match kind {
                Kind::R1 => "stale page",
                Kind::R2 => "write through a stale writable entry",
                Kind::R3 => "access after unmap",
                _ => "write without dirty",
            };
            out.push(Found {
                kind,
                detail: format!(
                    "{why}: {name} used {ptext} for {vn} while the PTE is {}",
                    self.pte_text(f.current_pte)
                ),
            });
        }
        let write = matches!(op, DevOp::Write { .. });
        if let Some(p) = page.filter(|p| self.freed & (1 << p) != 0) {
            out.push(Found {
                kind: if write {
                    Kind::FreedWrite
                } else {
                    Kind::FreedRead
                },
                detail: format!(
                    "{name} {} {} after the kernel freed it",
                    if write { "wrote into" } else { "read from" },
                    s.page_name(p)
                ),
            });
        }
        let i = self.word_idx(va);
        match op {
            DevOp::Write { value, .. } => {
                self.expected[i] = Some((value, Writer::Dev(d)));
                format!("{name}: write {vn} = {value:#x} into {ptext}")
            }
            _ => {
                if let Some((want, who)) = self.expected[i] {
                    if v != want {
                        let who = match who {
                            Writer::Init => "the initial contents".to_string(),
                            Writer::Cpu => "the CPU's write".to_string(),
                            Writer::Dev(x) => format!("{}'s write", s.devices[x].name),
                        };
                        out.push(Found {
                            kind: Kind::StaleRead,
                            detail: format!(
                                "{name} read {vn} = {v:#x} from {ptext}, but {vn} holds {want:#x} ({who})"
                            ),
                        });
                    }
                }
                format!("{name}: read {vn} = {v:#x} from {ptext}")
            }
        }
    }

    /// The final data check once every actor is done: a device write the
    /// VA does not hold is lost.
    pub fn finish(&mut self) {
        let s = self.script;
        let mut findings = Vec::new();
        for (i, &w) in s.words.iter().enumerate() {
            let Some((want, Writer::Dev(d))) = self.expected[i] else {
                continue;
            };
            let Some(pa) = self.cpu_pa(w) else { continue };
            let v = self.load(pa);
            if v != want {
                findings.push(Found {
                    kind: Kind::LostWrite,
                    detail: format!(
                        "at the end {} = {v:#x} (in {}), {}'s write of {want:#x} is lost",
                        s.va_name(w),
                        self.page_text(pa),
                        s.devices[d].name
                    ),
                });
            }
        }
        self.log.push(Rec {
            actor: END,
            fp: Fp::rw(res::PT | res::DATA_ALL | res::WORD_ALL, 0),
            text: "(all done: final contents checked)".into(),
            findings,
        });
    }

    /// Literal positions: the script line of each actor's next step.
    pub fn next_line(&self, actor: usize) -> Option<usize> {
        match actor {
            CPU => self.cpu_next().map(|c| c.1),
            IOMMU => None,
            a => self.prog.devs[a - 2].get(self.devs[a - 2].pc).map(|x| x.1),
        }
    }

    pub fn queue_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests;
