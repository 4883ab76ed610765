//! One execution of a script on the iommu-dev model: simulated guest memory
//! with a DTE, a GCR3 table and 4-level x86-64 tables, the CPU steps, the
//! IOMMU command processor and the device threads, each step atomic.
//!
//! Actors: 0 is the CPU, 1 the IOMMU command processor (it executes posted
//! commands one per step), 2.. the device threads. Every step has a
//! footprint (what it reads and writes) used by the explorer's reduction and
//! to cut counterexamples down to what matters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use iommu_dev::dte::GCR3_VALID;
use iommu_dev::mem::{self, Mem};
use iommu_dev::oracle::Rule;
use iommu_dev::walker::{PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US};
use iommu_dev::{
    AccessError, AccessFlags, AtsCompletion, Command, DevTableBase, Dte, FaultRule, Finding, Iommu,
    IommuConfig, SRange, Source, TraceEvent, Tracer,
};
use vm_memory::GuestMemoryAtomic;

use crate::script::{
    CpuOp, DevOp, Hook, Kind, NonPresent, Perms, Range, Script, Step, Target, MAX_PAGES,
};

pub const DEVTAB_GPA: u64 = 0x1000;
pub const GCR3_GPA: u64 = 0x2000;
pub const CW_GPA: u64 = 0x3000;
pub const CMDBUF_GPA: u64 = 0x4000;
pub const PT_POOL: u64 = 0x1_0000;
pub const PT_POOL_END: u64 = 0x4_0000;
pub const DATA_BASE: u64 = 0x4_0000;
pub const MEM_SIZE: usize = 0x8_0000;
pub const DOMAIN_ID: u16 = 1;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const SWAP_PTE: u64 = 0x5a5a_5000;
const MIGRATION_PTE: u64 = 0x3c3c_3000;

pub const CPU: usize = 0;
pub const IOMMU: usize = 1;
/// Actor of the final data check.
pub const END: usize = usize::MAX;

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

    fn rw(r: u128, w: u128) -> Fp {
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

#[derive(Debug, Default)]
struct Removed(AtomicUsize);

impl Tracer for Removed {
    fn trace(&self, ev: &TraceEvent) {
        match ev {
            TraceEvent::IotlbInvalidate { removed, .. }
            | TraceEvent::AtcInvalidate { removed, .. } => {
                self.0.fetch_add(*removed, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Device accesses and translations: user, ATC only (a miss is reported,
/// not resolved), no PRI.
fn dev_flags() -> AccessFlags {
    AccessFlags {
        no_pri: true,
        atc_only: true,
        ..AccessFlags::default()
    }
}

/// What an execution runs on: the iommu-dev model with simulated guest
/// memory ([`Model`]), or a real device (the guest's `amdvi-script`, which
/// drives the daemon through `/dev/amdvi`). The judging (data checks,
/// findings, timeline) is the same [`Exec`] code for both.
///
/// Pages are the script's pages by index; `pa` arguments are physical
/// addresses of words inside them (`page_pa(page) | offset`).
pub trait Backend {
    /// Back to the script's initial state: no mappings, every page zero,
    /// empty caches, no findings. An error makes the execution fail.
    fn reset(&mut self) -> Result<(), String>;
    /// The leaf entry of `va` (0 when no table maps it).
    fn pte(&mut self, va: u64) -> u64;
    /// Write the leaf entry of `va`, allocating tables as needed.
    fn set_pte(&mut self, va: u64, pte: u64);
    /// Physical address of a page.
    fn page_pa(&self, page: usize) -> u64;
    /// The page a physical address lies in.
    fn page_of(&self, pa: u64) -> Option<usize>;
    /// 8-byte CPU load / store of a word of a page.
    fn load(&mut self, pa: u64) -> u64;
    fn store(&mut self, pa: u64, v: u64);
    /// Every 8-byte word of `page` becomes `v`.
    fn fill(&mut self, page: usize, v: u64);
    /// Copy 4 KiB.
    fn copy(&mut self, from: usize, to: usize);
    /// Whether two pages hold the same bytes.
    fn identical(&mut self, a: usize, b: usize) -> bool;
    /// Execute one command (the IOMMU command processor's step); the
    /// number of cache entries it removed, when the backend can tell.
    fn execute(&mut self, cmd: &Command) -> Result<Option<usize>, String>;
    /// Device `dev` (index into the script's devices) sends an ATS
    /// translation request for `va`; a successful completion fills its ATC.
    fn translate(&mut self, dev: usize, va: u64) -> Result<AtsCompletion, AccessError>;
    /// An 8-byte DMA read (`write` None; the value read is returned) or
    /// write by device `dev`, through its ATC: the translation used and the
    /// value. A backend whose device translates on a miss itself returns
    /// `Fault` for a failed translation and never `AtcMiss`.
    fn access(
        &mut self,
        dev: usize,
        va: u64,
        write: Option<u64>,
    ) -> Result<(AtsCompletion, u64), AccessError>;
    /// Per-access oracle findings since the last call (and clear them).
    fn oracle(&mut self) -> Vec<Finding>;
    /// Audit every cached translation of `pasid`: the stale ones.
    fn audit(&mut self, pasid: u32) -> Result<Vec<Finding>, String>;
}

/// The iommu-dev model on simulated guest memory: a DTE per device, a
/// one-level GCR3 table, 4-level tables from a pool, pages at `DATA_BASE`.
pub struct Model {
    iommu: Iommu,
    mem: Mem,
    removed: Arc<Removed>,
    devids: Vec<u16>,
    pasid: u32,
    faults: Vec<FaultRule>,
    cr3: u64,
    next_table: u64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("devids", &self.devids)
            .finish()
    }
}

impl Model {
    pub fn new(script: &Script, faults: &[FaultRule]) -> Model {
        let mem = mem::anon(MEM_SIZE);
        let cfg = IommuConfig {
            endpoints: script.devices.iter().map(|d| d.devid).collect(),
            iotlb_entries: 256,
            pwc_entries: 256,
            dte_cache_entries: 16,
            atc_entries: 256,
            oracle: true,
            oracle_records: 64,
            five_level: false,
            event_log_entries: 64,
            ppr_log_entries: 64,
            ..IommuConfig::default()
        };
        let iommu = Iommu::new(cfg, GuestMemoryAtomic::new(mem.clone()));
        let removed = Arc::new(Removed::default());
        iommu.set_tracer(Some(removed.clone()));
        let mut m = Model {
            iommu,
            mem,
            removed,
            devids: script.devices.iter().map(|d| d.devid).collect(),
            pasid: script.pasid,
            faults: faults.to_vec(),
            cr3: PT_POOL,
            next_table: PT_POOL + 0x1000,
        };
        m.setup();
        m
    }

    fn setup(&mut self) {
        let mem = &self.mem;
        let cr3 = PT_POOL;
        for &devid in &self.devids {
            let dte = Dte::encode_v2(DOMAIN_ID, GCR3_GPA, 0, true, false);
            for (i, q) in dte.0.iter().enumerate() {
                mem::store_u64(
                    mem,
                    DEVTAB_GPA + u64::from(devid) * Dte::SIZE + 8 * i as u64,
                    *q,
                )
                .expect("DTE in RAM");
            }
        }
        mem::store_u64(mem, GCR3_GPA + 8 * u64::from(self.pasid), cr3 | GCR3_VALID)
            .expect("GCR3 in RAM");
        use iommu_dev::control;
        self.iommu
            .set_device_table(
                DevTableBase::encode(DEVTAB_GPA, 1),
                control::IOMMU_EN | control::GT_EN | control::CMD_BUF_EN | control::EVENT_LOG_EN,
            )
            .expect("device table");
        for f in &self.faults {
            self.iommu.faults().add(f.clone());
        }
        self.cr3 = cr3;
        self.next_table = cr3 + 0x1000;
    }

    /// The leaf entry's GPA for `va`, allocating tables when `create`.
    fn leaf_gpa(&mut self, va: u64, create: bool) -> Option<u64> {
        let mut table = self.cr3;
        for level in (2..=4u32).rev() {
            let gpa = table + 8 * ((va >> (12 + 9 * (level - 1))) & 0x1ff);
            let e = mem::load_u64(&self.mem, gpa).ok()?;
            table = if e & PTE_P != 0 {
                e & ADDR_MASK
            } else if create {
                let t = self.next_table;
                assert!(t < PT_POOL_END, "page-table pool exhausted");
                self.next_table += 0x1000;
                mem::store_u64(&self.mem, gpa, t | PTE_P | PTE_RW | PTE_US).ok()?;
                t
            } else {
                return None;
            };
        }
        Some(table + 8 * ((va >> 12) & 0x1ff))
    }

    fn read_page(&self, page: usize) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        mem::read(&self.mem, page_gpa(page), &mut b).expect("page");
        b
    }
}

impl Backend for Model {
    fn reset(&mut self) -> Result<(), String> {
        self.iommu.reset();
        self.iommu.faults().clear();
        mem::write(&self.mem, 0, &vec![0u8; MEM_SIZE]).expect("guest memory");
        self.setup();
        Ok(())
    }

    fn pte(&mut self, va: u64) -> u64 {
        self.leaf_gpa(va, false)
            .and_then(|g| mem::load_u64(&self.mem, g).ok())
            .unwrap_or(0)
    }

    fn set_pte(&mut self, va: u64, v: u64) {
        let g = self.leaf_gpa(va, true).expect("leaf");
        mem::store_u64(&self.mem, g, v).expect("PTE in RAM");
    }

    fn page_pa(&self, page: usize) -> u64 {
        page_gpa(page)
    }

    fn page_of(&self, pa: u64) -> Option<usize> {
        let p = pa.checked_sub(DATA_BASE)? >> 12;
        ((p as usize) < MAX_PAGES).then_some(p as usize)
    }

    fn load(&mut self, pa: u64) -> u64 {
        mem::load_u64(&self.mem, pa).unwrap_or(0)
    }

    fn store(&mut self, pa: u64, v: u64) {
        mem::store_u64(&self.mem, pa, v).expect("data");
    }

    fn fill(&mut self, page: usize, v: u64) {
        fill(&self.mem, page_gpa(page), v);
    }

    fn copy(&mut self, from: usize, to: usize) {
        let b = self.read_page(from);
        mem::write(&self.mem, page_gpa(to), &b).expect("page");
    }

    fn identical(&mut self, a: usize, b: usize) -> bool {
        self.read_page(a) == self.read_page(b)
    }

    fn execute(&mut self, cmd: &Command) -> Result<Option<usize>, String> {
        self.removed.0.store(0, Ordering::Relaxed);
        let r = self.iommu.execute(&[(CMDBUF_GPA, cmd.encode())]);
        if let Some((_, _, e)) = r.illegal {
            return Err(format!("illegal command: {e}"));
        }
        Ok(Some(self.removed.0.load(Ordering::Relaxed)))
    }

    fn translate(&mut self, dev: usize, va: u64) -> Result<AtsCompletion, AccessError> {
        self.iommu
            .ats_translate(self.devids[dev], self.pasid, va, dev_flags())
    }

    fn access(
        &mut self,
        dev: usize,
        va: u64,
        write: Option<u64>,
    ) -> Result<(AtsCompletion, u64), AccessError> {
        let devid = self.devids[dev];
        match write {
            Some(v) => self
                .iommu
                .dma_write(devid, self.pasid, va, dev_flags(), &v.to_le_bytes())
                .map(|r| (r.completion, v)),
            None => {
                let mut buf = [0u8; 8];
                self.iommu
                    .dma_read(devid, self.pasid, va, dev_flags(), &mut buf)
                    .map(|r| (r.completion, u64::from_le_bytes(buf)))
            }
        }
    }

    fn oracle(&mut self) -> Vec<Finding> {
        self.iommu.oracle().read(16, true).records
    }

    fn audit(&mut self, pasid: u32) -> Result<Vec<Finding>, String> {
        self.iommu
            .audit(pasid, 0, u64::MAX, 16)
            .map(|(fs, _)| fs)
            .map_err(|e| e.to_string())
    }
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
    pub error: Option<String>,
}

impl<B: Backend> std::fmt::Debug for Exec<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("cpu_pc", &self.cpu_pc)
            .field("steps", &self.log.len())
            .finish()
    }
}

fn page_gpa(page: usize) -> u64 {
    DATA_BASE + 0x1000 * page as u64
}

fn fill(mem: &Mem, gpa: u64, pattern: u64) {
    let buf: Vec<u8> = std::iter::repeat_n(pattern.to_le_bytes(), 512)
        .flatten()
        .collect();
    mem::write(mem, gpa, &buf).expect("data page in RAM");
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
            self.error = Some(format!("reset: {e}"));
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
                    Err(e) => self.error = Some(format!("audit: {e}")),
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
                    self.error = Some(format!("cpu write to unmapped {}", s.va_name(va)));
                    return format!("{text}  [ERROR: not mapped]");
                };
                self.backend.store(pa, value);
                let i = self.word_idx(va);
                self.expected[i] = Some((value, Writer::Cpu));
                return format!("{text}  [{}]", self.page_text(pa));
            }
            CpuOp::Read { va } => {
                let Some(pa) = self.cpu_pa(va) else {
                    self.error = Some(format!("cpu read of unmapped {}", s.va_name(va)));
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
                self.error = Some(format!("{}: {e}", c.text));
                return format!("iommu: {}: ERROR {e}", c.text);
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
        let translate = |e: &mut Self| -> Result<AtsCompletion, String> {
            e.backend
                .translate(d, va & !0xfff)
                .map_err(|err| err.to_string())
        };
        let comp_text = |e: &Self, c: &iommu_dev::AtsCompletion| {
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
                        self.error = Some(format!("{name}: translate {vn}: {e}"));
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
                        self.error = Some(format!("{name}: translate {vn}: {e}"));
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
                self.error = Some(format!("{name}: {what}: {e}"));
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
