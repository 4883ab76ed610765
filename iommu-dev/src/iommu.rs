//! The IOMMU: DTE lookup, guest translation through the IOTLB and walk cache,
//! the command processor, the event and PPR logs, and the ATS endpoints
//! behind it with their ATCs and PRI.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use vm_memory::atomic::GuestMemoryLoadGuard;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

use crate::ats::{AtcGate, AtsCompletion, Pri, PRG_INVALID, PRG_SUCCESS};
use crate::cache::{DteCache, Iotlb, Pwc, Tag, TlbEntry};
use crate::command::{Command, CommandError};
use crate::dte::{gcr3_lookup, Dte, DteInfo, Gcr3Fault};
use crate::event::{self, flag, Event, Log, PprEntry};
use crate::fault::{apply_delay, FaultAction, FaultInjector, FaultPoint};
use crate::mem::{self, Mem, MemError};
use crate::oracle::{classify, Finding, Oracle, Rule, Source};
use crate::regs::{control, efr_image, DevTableBase, RegError, PASID_BITS};
use crate::srange::SRange;
use crate::walker::{self, AdUpdate, Dirty, Perms, Request, Start, Translation, WalkFault};

/// How often one access retranslates (page requests, overtaking invalidations).
const MAX_RETRANSLATIONS: u32 = 8;

/// Parameters of the modelled unit.
#[derive(Debug, Clone, PartialEq)]
pub struct IommuConfig {
    /// Device ids (BDF) of the ATS endpoints.
    pub endpoints: Vec<u16>,
    pub iotlb_entries: usize,
    pub pwc_entries: usize,
    pub dte_cache_entries: usize,
    pub atc_entries: usize,
    pub oracle: bool,
    pub oracle_records: usize,
    /// Advertise and accept 5-level guest tables (EFR.GATS=1).
    pub five_level: bool,
    /// How long an access waits for COMPLETE_PPR_REQUEST.
    pub pri_timeout: Duration,
    pub event_log_entries: usize,
    pub ppr_log_entries: usize,
}

impl Default for IommuConfig {
    fn default() -> Self {
        IommuConfig {
            endpoints: vec![0x0010],
            iotlb_entries: 4096,
            pwc_entries: 256,
            dte_cache_entries: 64,
            atc_entries: 512,
            oracle: true,
            oracle_records: 4096,
            five_level: true,
            pri_timeout: Duration::from_secs(5),
            event_log_entries: 512,
            ppr_log_entries: 512,
        }
    }
}

/// Device-side attributes of an access (PASID TLP prefix and ATS NW bit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessFlags {
    pub privileged: bool,
    pub exec: bool,
    /// ATS NW: the device will not write with this translation.
    pub no_write: bool,
    /// Fail at once instead of issuing a PRI page request.
    pub no_pri: bool,
    /// Use only what the ATC holds: a miss is `AccessError::AtcMiss` (the
    /// simulator makes translation and access separate steps).
    pub atc_only: bool,
    /// Untranslated DMA (AT=00b): the IOMMU translates every access through
    /// its IOTLB, a fault is an IO_PAGE_FAULT event and the access fails.
    pub untranslated: bool,
}

/// What one endpoint DMA did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessReport {
    /// The last translation used.
    pub completion: AtsCompletion,
    pub page_requests: u32,
    pub atc_hits: u32,
    pub atc_misses: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("the IOMMU is not enabled or has no device table")]
    NotReady,
    #[error("device {0:#06x} is not an endpoint")]
    NoEndpoint(u16),
    #[error("PASID {0} is wider than {PASID_BITS} bits")]
    PasidRange(u32),
    #[error("translation fault at {va:#x}")]
    Fault { va: u64 },
    #[error("no usable ATC entry for {va:#x}")]
    AtcMiss { va: u64 },
    #[error("no page-request answer for {va:#x}")]
    PriTimeout { va: u64 },
    #[error("the IOMMU rejected the request for {va:#x} (event logged)")]
    Device { va: u64 },
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// Result of a COMMANDS batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchResult {
    pub executed: usize,
    pub comp_wait_int: u32,
    /// Index, GPA and reason of the command that stopped the batch.
    pub illegal: Option<(usize, u64, CommandError)>,
}

/// Counters, in the order of the protocol's STATS request.
#[derive(Debug, Default)]
pub struct Stats {
    pub commands: AtomicU64,
    pub completion_waits: AtomicU64,
    pub walks: AtomicU64,
    pub iotlb_hits: AtomicU64,
    pub iotlb_misses: AtomicU64,
    pub pwc_hits: AtomicU64,
    pub ats_requests: AtomicU64,
    pub ats_faults: AtomicU64,
    pub page_requests: AtomicU64,
    pub prg_responses: AtomicU64,
    pub iommu_invalidations: AtomicU64,
    pub atc_invalidations: AtomicU64,
    pub illegal_commands: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A trace record for `--trace` style logging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceEvent {
    Command {
        gpa: u64,
        cmd: Command,
    },
    IllegalCommand {
        gpa: u64,
        err: CommandError,
    },
    Walk {
        devid: u16,
        pasid: u32,
        va: u64,
        result: Result<(u64, u8), WalkFault>,
    },
    AtsRequest {
        devid: u16,
        pasid: u32,
        va: u64,
        completion: AtsCompletion,
    },
    IotlbInvalidate {
        domain_id: u16,
        pasid: u32,
        range: SRange,
        removed: usize,
    },
    AtcInvalidate {
        devid: u16,
        pasid: Option<u32>,
        range: SRange,
        removed: usize,
    },
    Event {
        entry: [u8; 16],
    },
    PageRequest {
        devid: u16,
        pasid: u32,
        va: u64,
        prgi: u16,
        write: bool,
    },
    PrgResponse {
        devid: u16,
        prgi: u16,
        code: u8,
    },
    Finding(Finding),
}

pub trait Tracer: Send + Sync {
    fn trace(&self, ev: &TraceEvent);
}

/// An ATS endpoint device behind the IOMMU.
#[derive(Debug)]
pub struct Endpoint {
    pub devid: u16,
    pub gate: AtcGate,
    pub pri: Pri,
}

#[derive(Debug, Clone, Copy, Default)]
struct Regs {
    devtab: Option<DevTableBase>,
    control: u64,
}

/// Outcome of the IOMMU side of an ATS translation request.
enum Xlate {
    Ok(TlbEntry),
    /// Translation fault: R=W=0 to the device.
    Fault,
}

/// The modelled IOMMU with its endpoints.
pub struct Iommu {
    cfg: IommuConfig,
    efr: u64,
    mem: GuestMemoryAtomic<Mem>,
    /// Bumped when the memory map changes; ports refresh on it.
    mem_gen: AtomicU64,
    regs: RwLock<Regs>,
    dte_cache: Mutex<DteCache<DteInfo>>,
    iotlb: Mutex<Iotlb>,
    pwc: Mutex<Pwc>,
    /// Bumped by every IOMMU-side invalidation: a walk that started before
    /// it does not fill the caches.
    gen: AtomicU64,
    endpoints: Vec<Endpoint>,
    events: Log,
    ppr: Log,
    oracle: Oracle,
    faults: FaultInjector,
    stats: Stats,
    cmd_lock: Mutex<()>,
    tracer: RwLock<Option<Arc<dyn Tracer>>>,
}

impl std::fmt::Debug for Iommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iommu")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Iommu {
    pub fn new(cfg: IommuConfig, mem: GuestMemoryAtomic<Mem>) -> Self {
        Iommu {
            efr: efr_image(cfg.five_level),
            mem: GuestMemoryAtomic::from(mem.memory().into_inner()),
            mem_gen: AtomicU64::new(0),
            regs: RwLock::new(Regs::default()),
            dte_cache: Mutex::new(DteCache::new(cfg.dte_cache_entries)),
            iotlb: Mutex::new(Iotlb::new(cfg.iotlb_entries)),
            pwc: Mutex::new(Pwc::new(cfg.pwc_entries)),
            gen: AtomicU64::new(0),
            endpoints: cfg
                .endpoints
                .iter()
                .map(|&devid| Endpoint {
                    devid,
                    gate: AtcGate::new(cfg.atc_entries),
                    pri: Pri::default(),
                })
                .collect(),
            events: Log::new(cfg.event_log_entries),
            ppr: Log::new(cfg.ppr_log_entries),
            oracle: Oracle::new(cfg.oracle, cfg.oracle_records),
            faults: FaultInjector::default(),
            stats: Stats::default(),
            cmd_lock: Mutex::new(()),
            tracer: RwLock::new(None),
            cfg,
        }
    }

    pub fn config(&self) -> &IommuConfig {
        &self.cfg
    }

    /// The EFR image (§7.3).
    pub fn efr(&self) -> u64 {
        self.efr
    }

    /// Take the current memory map of `mem` (after the frontend sent a new
    /// memory table); operations in progress finish on the old one.
    pub fn set_memory(&self, mem: GuestMemoryAtomic<Mem>) {
        let map = (*mem.memory()).clone();
        self.mem.lock().expect("memory map lock").replace(map);
        self.mem_gen.fetch_add(1, Ordering::AcqRel);
    }

    fn memory(&self) -> GuestMemoryLoadGuard<Mem> {
        self.mem.memory()
    }

    pub fn set_tracer(&self, t: Option<Arc<dyn Tracer>>) {
        *self.tracer.write().unwrap() = t;
    }

    fn trace(&self, ev: TraceEvent) {
        if let Some(t) = self.tracer.read().unwrap().as_ref() {
            t.trace(&ev);
        }
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn endpoint(&self, devid: u16) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.devid == devid)
    }

    pub fn event_log(&self) -> &Log {
        &self.events
    }

    pub fn ppr_log(&self) -> &Log {
        &self.ppr
    }

    pub fn oracle(&self) -> &Oracle {
        &self.oracle
    }

    pub fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn control(&self) -> u64 {
        self.regs.read().unwrap().control
    }

    /// Program the Device Table Base and Control registers (§7.1, §7.2).
    pub fn set_device_table(&self, devtab_reg: u64, control_reg: u64) -> Result<(), RegError> {
        if control_reg & !control::KNOWN != 0 {
            return Err(RegError::Reserved {
                reg: control_reg,
                bits: control_reg & !control::KNOWN,
            });
        }
        let dt = DevTableBase::decode(devtab_reg)?;
        if !mem::in_ram(&self.memory(), dt.base, dt.bytes()) {
            return Err(RegError::TableOutsideRam {
                base: dt.base,
                bytes: dt.bytes(),
            });
        }
        *self.regs.write().unwrap() = Regs {
            devtab: Some(dt),
            control: control_reg,
        };
        self.dte_cache.lock().unwrap().clear();
        self.gen.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Back to the power-on state: caches, ATCs, PRI, logs, findings, registers.
    pub fn reset(&self) {
        *self.regs.write().unwrap() = Regs::default();
        self.dte_cache.lock().unwrap().clear();
        self.iotlb.lock().unwrap().clear();
        self.pwc.lock().unwrap().clear();
        self.gen.fetch_add(1, Ordering::AcqRel);
        for ep in &self.endpoints {
            ep.gate.clear();
            ep.pri.reset();
        }
        self.events.clear();
        self.ppr.clear();
        self.oracle.reset();
    }

    fn log_event(&self, e: Event) {
        log::debug!("event: {e:?}");
        self.log_entry(e.encode());
    }

    fn log_entry(&self, entry: [u8; 16]) {
        self.trace(TraceEvent::Event { entry });
        if self.control() & control::EVENT_LOG_EN != 0 {
            self.events.push(entry);
        }
    }

    /// Counters 2.. of the protocol's STATS request, in order.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let findings: u64 = self.oracle.counts()[..4].iter().sum();
        let atc = self.endpoints.iter().fold((0, 0), |(h, m), ep| {
            let (eh, em) = ep.gate.hits_misses();
            (h + eh, m + em)
        });
        vec![
            ("commands", g(&s.commands)),
            ("completion_waits", g(&s.completion_waits)),
            ("walks", g(&s.walks)),
            ("iotlb_hits", g(&s.iotlb_hits)),
            ("iotlb_misses", g(&s.iotlb_misses)),
            ("pwc_hits", g(&s.pwc_hits)),
            ("atc_hits", atc.0),
            ("atc_misses", atc.1),
            ("ats_requests", g(&s.ats_requests)),
            ("ats_faults", g(&s.ats_faults)),
            ("page_requests", g(&s.page_requests)),
            ("prg_responses", g(&s.prg_responses)),
            ("events_logged", self.events.logged()),
            ("events_dropped", self.events.dropped()),
            ("ppr_logged", self.ppr.logged()),
            ("ppr_dropped", self.ppr.dropped()),
            ("iommu_invalidations", g(&s.iommu_invalidations)),
            ("atc_invalidations", g(&s.atc_invalidations)),
            ("oracle_findings", findings),
            ("illegal_commands", g(&s.illegal_commands)),
            ("injected_faults", self.faults.injected()),
        ]
    }

    /// The DTE of `devid` (cached, or read and checked); a failure has been
    /// logged as the event hardware would write, and `va` names the request.
    fn dte(&self, mem: &Mem, devid: u16, ats: bool, va: u64) -> Result<DteInfo, AccessError> {
        let regs = *self.regs.read().unwrap();
        let Some(dt) = regs
            .devtab
            .filter(|_| regs.control & control::IOMMU_EN != 0)
        else {
            return Err(AccessError::NotReady);
        };
        if let Some(d) = self.dte_cache.lock().unwrap().get(devid) {
            return Ok(d);
        }
        let tr = if ats { flag::TR } else { 0 };
        if u32::from(devid) >= dt.entries {
            self.log_event(Event::invalid_device_request(devid, 0, tr, 2, 0));
            return Err(AccessError::Device { va });
        }
        let gen = self.gen.load(Ordering::Acquire);
        let raw = match Dte::read(mem, dt.base, devid) {
            Ok(d) => d,
            Err(e) => {
                self.log_event(Event::dev_tab_hw_error(devid, tr, e.gpa));
                return Err(AccessError::Device { va });
            }
        };
        match raw.decode(self.cfg.five_level, regs.control & control::EPH_EN != 0) {
            Ok(info) => {
                let mut c = self.dte_cache.lock().unwrap();
                if self.gen.load(Ordering::Acquire) == gen {
                    c.insert(devid, info);
                }
                Ok(info)
            }
            Err(err) => {
                log::warn!("device {devid:#06x}: illegal DTE: {err}");
                self.log_event(Event::illegal_dte(devid, 0, flag::RZ | tr, 0));
                Err(AccessError::Device { va })
            }
        }
    }

    /// The IOMMU side of a translation for (devid, PASID): IOTLB, walk cache,
    /// GCR3 and the guest table walk with A/D updates. Faults that hardware
    /// reports are logged here.
    #[allow(clippy::too_many_arguments)]
    fn translate(
        &self,
        mem: &Mem,
        devid: u16,
        dte: &DteInfo,
        pasid: u32,
        va: u64,
        req: Request,
        dirty: Dirty,
        ats: bool,
    ) -> Result<Xlate, ()> {
        // A PASID beyond what the GCR3 table's levels index has no entry.
        if pasid >> (9 * (u32::from(dte.glx) + 1)) != 0 {
            return Ok(Xlate::Fault);
        }
        let tag = Tag {
            domain_id: dte.domain_id,
            pasid,
        };
        let wants_dirty = |e: &TlbEntry| match dirty {
            Dirty::Never => true,
            Dirty::OnWrite => !req.write || e.dirty,
            Dirty::IfWritable => !e.perms.write || e.dirty,
        };
        if let Some(e) = self.iotlb.lock().unwrap().lookup(tag, va) {
            if e.perms.allow(&req) && wants_dirty(&e) {
                inc(&self.stats.iotlb_hits);
                return Ok(Xlate::Ok(e));
            }
        }
        inc(&self.stats.iotlb_misses);
        let levels = if dte.five_level { 5 } else { 4 };
        let gen = self.gen.load(Ordering::Acquire);
        let flags_base =
            flag::GN | if ats { flag::TR } else { 0 } | if req.privileged { 0 } else { flag::US };
        if let Some(FaultAction::Fail) = apply_delay(self.faults.check(
            FaultPoint::WalkRead,
            Some(devid),
            Some(pasid),
        )) {
            self.log_event(Event::page_tab_hw_error(
                devid,
                pasid,
                flags_base,
                dte.gcr3_root,
            ));
            return Err(());
        }
        let cached = self.pwc.lock().unwrap().lookup(tag, va, levels);
        let start = match cached {
            Some(s) => {
                inc(&self.stats.pwc_hits);
                s
            }
            None => match gcr3_lookup(mem, dte.gcr3_root, dte.glx, pasid) {
                Ok(cr3) => Start {
                    level: levels,
                    table: cr3 & !0xfff & ((1 << 52) - 1),
                    perms: Perms::ALL,
                },
                Err(Gcr3Fault::NotValid) => return Ok(Xlate::Fault),
                Err(Gcr3Fault::Reserved { .. }) => {
                    self.log_event(Event::io_page_fault(
                        devid,
                        pasid,
                        flags_base | flag::RZ,
                        va,
                    ));
                    return Ok(Xlate::Fault);
                }
                Err(Gcr3Fault::Memory(gpa)) => {
                    self.log_event(Event::page_tab_hw_error(devid, pasid, flags_base, gpa));
                    return Err(());
                }
            },
        };
        inc(&self.stats.walks);
        let r = walker::walk_from(mem, start, levels, va, req, AdUpdate::Update(dirty));
        self.trace(TraceEvent::Walk {
            devid,
            pasid,
            va,
            result: r.map(|t| (t.pa(va), t.size_log2)),
        });
        let rw = if req.write { flag::RW } else { 0 };
        let nx = if req.exec { flag::NX } else { 0 };
        match r {
            Ok(t) => {
                self.fill(tag, gen, va, start.perms, &t, devid, pasid);
                Ok(Xlate::Ok(TlbEntry::from(&t)))
            }
            Err(WalkFault::Memory { gpa }) => {
                self.log_event(Event::page_tab_hw_error(devid, pasid, flags_base | rw, gpa));
                Err(())
            }
            Err(WalkFault::Reserved { .. }) => {
                self.log_event(Event::io_page_fault(
                    devid,
                    pasid,
                    flags_base | rw | nx | flag::RZ | flag::PR,
                    va,
                ));
                Ok(Xlate::Fault)
            }
            Err(f) => {
                if !ats && !dte.sa {
                    let pr = if f.present() { flag::PR | flag::PE } else { 0 };
                    self.log_event(Event::io_page_fault(
                        devid,
                        pasid,
                        flags_base | rw | nx | pr,
                        va,
                    ));
                }
                Ok(Xlate::Fault)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        tag: Tag,
        gen: u64,
        va: u64,
        start_perms: Perms,
        t: &Translation,
        devid: u16,
        pasid: u32,
    ) {
        if self
            .faults
            .check(FaultPoint::IotlbFill, Some(devid), Some(pasid))
            .is_some()
        {
            return;
        }
        let mut iotlb = self.iotlb.lock().unwrap();
        if self.gen.load(Ordering::Acquire) != gen {
            return;
        }
        iotlb.insert(tag, TlbEntry::from(t));
        drop(iotlb);
        let mut pwc = self.pwc.lock().unwrap();
        if self.gen.load(Ordering::Acquire) == gen {
            pwc.insert_walk(tag, va, start_perms, t.uppers());
        }
    }

    fn check_pasid(pasid: u32) -> Result<(), AccessError> {
        if pasid >> PASID_BITS != 0 {
            return Err(AccessError::PasidRange(pasid));
        }
        Ok(())
    }

    /// An ATS translation request from `devid` (§8.5 steps 1-2): what the
    /// IOMMU answers. Faults are R=W=0 completions, not errors.
    fn ats_request(
        &self,
        mem: &Mem,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
    ) -> Result<AtsCompletion, AccessError> {
        inc(&self.stats.ats_requests);
        let dte = self.dte(mem, devid, true, va)?;
        let gt_en = self.control() & control::GT_EN != 0;
        if !dte.v || !dte.tv || !dte.iotlb || !dte.gv || !gt_en {
            let kind = if gt_en {
                event::IDR_TRANSLATION_NOT_ALLOWED
            } else {
                event::IDR_TRANSLATION_DISABLED
            };
            self.log_event(Event::invalid_device_request(
                devid,
                pasid,
                flag::TR | flag::GN,
                kind,
                va,
            ));
            return Err(AccessError::Device { va });
        }
        let req = Request {
            write: false,
            exec: flags.exec,
            privileged: flags.privileged,
        };
        let dirty = if flags.no_write {
            Dirty::Never
        } else {
            Dirty::IfWritable
        };
        let c = match self.translate(mem, devid, &dte, pasid, va, req, dirty, true) {
            Err(()) => return Err(AccessError::Device { va }),
            Ok(Xlate::Fault) => {
                inc(&self.stats.ats_faults);
                AtsCompletion::fault(12)
            }
            Ok(Xlate::Ok(e)) => AtsCompletion {
                r: true,
                w: e.perms.write && !flags.no_write,
                u: false,
                exe: flags.exec && !e.perms.nx,
                privileged: flags.privileged,
                global: false,
                pa_base: e.pa_base,
                size_log2: e.size_log2,
            },
        };
        self.trace(TraceEvent::AtsRequest {
            devid,
            pasid,
            va,
            completion: c,
        });
        Ok(c)
    }

    fn endpoint_checked(&self, devid: u16, pasid: u32) -> Result<&Endpoint, AccessError> {
        Self::check_pasid(pasid)?;
        self.endpoint(devid).ok_or(AccessError::NoEndpoint(devid))
    }

    /// ENDPOINT TRANSLATE: a translation request whose successful completion
    /// the endpoint stores in its ATC.
    pub fn ats_translate(
        &self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
    ) -> Result<AtsCompletion, AccessError> {
        self.ats_translate_in(&self.memory(), devid, pasid, va, flags)
    }

    fn ats_translate_in(
        &self,
        mem: &Mem,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
    ) -> Result<AtsCompletion, AccessError> {
        let ep = self.endpoint_checked(devid, pasid)?;
        let gen = ep.gate.read().gen;
        let c = self.ats_request(mem, devid, pasid, va, flags)?;
        if !c.is_fault()
            && self
                .faults
                .check(FaultPoint::AtcFill, Some(devid), Some(pasid))
                .is_none()
        {
            ep.gate.fill(gen, pasid, va & !0xfff, c);
        }
        Ok(c)
    }

    /// Endpoint DMA read through the ATC.
    pub fn dma_read(
        &self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        buf: &mut [u8],
    ) -> Result<AccessReport, AccessError> {
        let mut tally = Tally::default();
        let r = self.dma(
            &self.memory(),
            devid,
            pasid,
            va,
            flags,
            Buf::Read(buf),
            &mut tally,
        );
        tally.flush(self);
        r
    }

    /// Endpoint DMA write through the ATC.
    pub fn dma_write(
        &self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        data: &[u8],
    ) -> Result<AccessReport, AccessError> {
        let mut tally = Tally::default();
        let r = self.dma(
            &self.memory(),
            devid,
            pasid,
            va,
            flags,
            Buf::Write(data),
            &mut tally,
        );
        tally.flush(self);
        r
    }

    /// A device's own path to the IOMMU and memory, for a thread that makes
    /// many accesses: it keeps the memory map until the frontend changes it.
    pub fn port(&self) -> Port<'_> {
        Port {
            iommu: self,
            gen: self.mem_gen.load(Ordering::Acquire),
            mem: self.memory().into_inner(),
            tally: Tally::default(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dma(
        &self,
        mem: &Mem,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        mut buf: Buf<'_>,
        tally: &mut Tally,
    ) -> Result<AccessReport, AccessError> {
        let flags = AccessFlags {
            no_write: flags.no_write && !buf.is_write(),
            ..flags
        };
        Self::check_pasid(pasid)?;
        let idx = self
            .endpoints
            .iter()
            .position(|e| e.devid == devid)
            .ok_or(AccessError::NoEndpoint(devid))?;
        let ep = &self.endpoints[idx];
        let mut rep = AccessReport::default();
        let len = buf.len();
        let mut done = 0usize;
        while done < len {
            let cur = va.wrapping_add(done as u64);
            let n = (0x1000 - (cur & 0xfff) as usize).min(len - done);
            let r = self.access_page(mem, ep, pasid, cur, flags, &mut buf, done, n, &mut rep);
            if r.is_err() {
                tally.add(idx, &rep);
            }
            r?;
            done += n;
        }
        tally.add(idx, &rep);
        Ok(rep)
    }

    #[allow(clippy::too_many_arguments)]
    fn access_page(
        &self,
        mem: &Mem,
        ep: &Endpoint,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        buf: &mut Buf<'_>,
        off: usize,
        n: usize,
        rep: &mut AccessReport,
    ) -> Result<(), AccessError> {
        let write = buf.is_write();
        if flags.untranslated {
            return self.untranslated_access(mem, ep.devid, pasid, va, flags, buf, off, n, rep);
        }
        let mut rounds = 0;
        loop {
            // Hit: the data moves while the ATC's read side is held, so an
            // invalidation of this entry waits for the access (§8.3).
            let gen = {
                let st = ep.gate.read();
                if let Some(e) = st
                    .atc
                    .lookup(pasid, va)
                    .filter(|e| e.completion.allows(write))
                {
                    rep.atc_hits += 1;
                    rep.completion = e.completion;
                    return self.move_data(
                        mem,
                        ep.devid,
                        pasid,
                        va,
                        e.pa(va),
                        Source::Atc,
                        buf,
                        off,
                        n,
                    );
                }
                if flags.atc_only {
                    return Err(AccessError::AtcMiss { va });
                }
                st.gen
            };
            rep.atc_misses += 1;
            let c = self.ats_request(mem, ep.devid, pasid, va, flags)?;
            rep.completion = c;
            if c.allows(write) {
                if self
                    .faults
                    .check(FaultPoint::AtcFill, Some(ep.devid), Some(pasid))
                    .is_none()
                {
                    ep.gate.fill(gen, pasid, va, c);
                }
                // Use the completion unless an invalidation overtook it.
                let st = ep.gate.read();
                if st.gen == gen {
                    let pa = c.pa_base | (va & ((1u64 << c.size_log2) - 1));
                    return self.move_data(mem, ep.devid, pasid, va, pa, Source::Atc, buf, off, n);
                }
                rounds += 1;
                if rounds > MAX_RETRANSLATIONS {
                    return Err(AccessError::Fault { va });
                }
                continue;
            }
            rounds += 1;
            if flags.no_pri || rounds > MAX_RETRANSLATIONS {
                return Err(AccessError::Fault { va });
            }
            rep.page_requests += 1;
            match self.page_request(mem, ep, pasid, va, write, flags)? {
                PRG_SUCCESS => continue,
                _ => return Err(AccessError::Fault { va }),
            }
        }
    }

    /// The translated access itself, with the oracle's check while it is in flight.
    #[allow(clippy::too_many_arguments)]
    fn move_data(
        &self,
        mem: &Mem,
        devid: u16,
        pasid: u32,
        va: u64,
        pa: u64,
        source: Source,
        buf: &mut Buf<'_>,
        off: usize,
        n: usize,
    ) -> Result<(), AccessError> {
        let write = buf.is_write();
        match buf {
            Buf::Read(b) => mem::read(mem, pa, &mut b[off..off + n])?,
            Buf::Write(d) => mem::write(mem, pa, &d[off..off + n])?,
        }
        if self.oracle.enabled() {
            self.oracle_check(mem, devid, pasid, va, write, pa, source);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn untranslated_access(
        &self,
        mem: &Mem,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        buf: &mut Buf<'_>,
        off: usize,
        n: usize,
        rep: &mut AccessReport,
    ) -> Result<(), AccessError> {
        let write = buf.is_write();
        let dte = self.dte(mem, devid, false, va)?;
        if !dte.v || !dte.tv || !dte.gv || self.control() & control::GT_EN == 0 {
            // No guest translation for PASID-tagged DMA: target abort.
            self.log_event(Event::io_page_fault(
                devid,
                pasid,
                flag::GN | if write { flag::RW } else { 0 },
                va,
            ));
            return Err(AccessError::Device { va });
        }
        let req = Request {
            write,
            exec: flags.exec,
            privileged: flags.privileged,
        };
        match self.translate(mem, devid, &dte, pasid, va, req, Dirty::OnWrite, false) {
            Err(()) => Err(AccessError::Device { va }),
            Ok(Xlate::Fault) => Err(AccessError::Fault { va }),
            Ok(Xlate::Ok(e)) => {
                let pa = e.pa_base | (va & ((1u64 << e.size_log2) - 1));
                rep.completion = AtsCompletion {
                    r: true,
                    w: e.perms.write,
                    pa_base: e.pa_base,
                    size_log2: e.size_log2,
                    ..Default::default()
                };
                self.move_data(mem, devid, pasid, va, pa, Source::Iotlb, buf, off, n)
            }
        }
    }

    /// PRI: post a page request and wait for its PRG response (§8.4).
    fn page_request(
        &self,
        mem: &Mem,
        ep: &Endpoint,
        pasid: u32,
        va: u64,
        write: bool,
        flags: AccessFlags,
    ) -> Result<u8, AccessError> {
        let prgi = {
            let mut st = ep.pri.state.lock().unwrap();
            if st.stopped {
                return Err(AccessError::Fault { va });
            }
            st.alloc().ok_or(AccessError::Fault { va })?
        };
        inc(&self.stats.page_requests);
        self.trace(TraceEvent::PageRequest {
            devid: ep.devid,
            pasid,
            va,
            prgi,
            write,
        });
        let entry = PprEntry {
            devid: ep.devid,
            pasid,
            tag: prgi | event::PPR_TAG_LAST,
            flags: event::ppr_flag::GN
                | event::ppr_flag::READ
                | if write { event::ppr_flag::WRITE } else { 0 }
                | if flags.exec { event::ppr_flag::EXEC } else { 0 }
                | if flags.privileged {
                    0
                } else {
                    event::ppr_flag::US
                },
            addr: va & !0xfff,
        };
        let ctl = self.control();
        let dte_ppr_ok = self
            .dte(mem, ep.devid, true, va)
            .is_ok_and(|d| d.ppr || ctl & control::EPH_EN == 0);
        let dropped = self
            .faults
            .check(FaultPoint::PriRequest, Some(ep.devid), Some(pasid))
            == Some(FaultAction::Drop);
        if ctl & control::PPR_LOG_EN == 0 || ctl & control::PPR_EN == 0 || !dte_ppr_ok {
            // PRI not accepted: INVALID_PPR_REQUEST in the PPR-like layout
            // (§5.3, §9) and an Invalid Request answer from the IOMMU itself.
            self.log_entry(entry.encode_invalid());
            ep.pri.respond(prgi, PRG_INVALID);
        } else if !dropped {
            self.ppr.push(entry.encode());
        }
        match ep.pri.wait(prgi, self.cfg.pri_timeout) {
            Some(code) => Ok(code),
            None => Err(AccessError::PriTimeout { va }),
        }
    }

    /// The current leaf for (devid, PASID, va) read without side effects:
    /// (page PA, writable, dirty, entry); None when not mapped now.
    fn current_leaf(
        &self,
        mem: &Mem,
        devid: u16,
        pasid: u32,
        va: u64,
    ) -> Option<(u64, Perms, bool, u64)> {
        let regs = *self.regs.read().unwrap();
        let dt = regs.devtab?;
        let dte = Dte::read(mem, dt.base, devid)
            .ok()?
            .decode(self.cfg.five_level, true)
            .ok()?;
        let cr3 = gcr3_lookup(mem, dte.gcr3_root, dte.glx, pasid).ok()?;
        let levels = if dte.five_level { 5 } else { 4 };
        let any = Request {
            write: false,
            exec: false,
            privileged: true,
        };
        let t = walker::walk(mem, cr3, levels, va, any, AdUpdate::ReadOnly).ok()?;
        Some((t.pa(va) & !0xfff, t.perms, t.dirty, t.leaf))
    }

    fn epoch(&self, mem: &Mem) -> u64 {
        match self.oracle.epoch_gpa() {
            0 => 0,
            gpa => mem::load_u64(mem, gpa).unwrap_or(0),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn oracle_check(
        &self,
        mem: &Mem,
        devid: u16,
        pasid: u32,
        va: u64,
        write: bool,
        pa: u64,
        source: Source,
    ) {
        let cur = self.current_leaf(mem, devid, pasid, va);
        let Some(rule) = classify(
            pa & !0xfff,
            write,
            cur.map(|(p, perms, d, e)| (p, perms.write, d, e)),
        ) else {
            return;
        };
        let f = Finding {
            rule,
            devid,
            source,
            pasid,
            write,
            va,
            cached_pa: pa,
            current_pte: cur.map_or(0, |c| c.3),
            seq: self.oracle.next_seq(),
            epoch: self.epoch(mem),
        };
        self.trace(TraceEvent::Finding(f));
        self.oracle.record(f);
    }

    /// Audit: every cached translation of `pasid` overlapping `[va, va+len)`
    /// in the ATCs, the IOTLB and the walk cache must agree with the tables
    /// in memory now. Returns the disagreements (at most `max`) and their count.
    pub fn audit(
        &self,
        pasid: u32,
        va: u64,
        len: u64,
        max: usize,
    ) -> Result<(Vec<Finding>, u64), AccessError> {
        Self::check_pasid(pasid)?;
        let mem = self.memory();
        let end = va.saturating_add(len);
        let mut out = Vec::new();
        let mut count = 0u64;
        let epoch = self.epoch(&mem);
        let mut report = |f: Finding| {
            count += 1;
            if out.len() < max {
                let f = Finding {
                    seq: self.oracle.next_seq(),
                    epoch,
                    ..f
                };
                self.trace(TraceEvent::Finding(f));
                out.push(f);
            }
        };
        let stale =
            |devid: u16, source: Source, va: u64, cached_pa: u64, current_pte: u64| Finding {
                rule: Rule::Stale,
                devid,
                source,
                pasid,
                write: false,
                va,
                cached_pa,
                current_pte,
                seq: 0,
                epoch: 0,
            };
        // Check a cached leaf (page by page inside the audited range).
        let check_leaf =
            |devid_for_tables: u16, base: u64, size_log2: u8, pa_base: u64, w: bool, user: bool| {
                let lo = base.max(va & !0xfff);
                let hi = (base + ((1u64 << size_log2) - 1)).min(end.saturating_sub(1));
                let mut bad = Vec::new();
                let mut p = lo & !0xfff;
                while p <= hi {
                    let cached = pa_base + (p - base);
                    match self.current_leaf(&mem, devid_for_tables, pasid, p) {
                        None => bad.push((p, cached, 0)),
                        Some((pa, perms, dirty, e)) => {
                            if pa != cached
                                || (w && (!perms.write || !dirty))
                                || (user && !perms.user)
                            {
                                bad.push((p, cached, e));
                            }
                        }
                    }
                    p = match p.checked_add(0x1000) {
                        Some(n) => n,
                        None => break,
                    };
                }
                bad
            };
        // Each cache stays locked while its entries are checked (for the ATC
        // the read side, which an invalidation waits for): an entry reported
        // was still cached when its PTE was read.
        for ep in &self.endpoints {
            let st = ep.gate.read();
            for e in st.atc.entries(pasid, va, len) {
                let c = e.completion;
                for (p, cached, pte) in check_leaf(
                    ep.devid,
                    e.va_base,
                    c.size_log2,
                    c.pa_base,
                    c.w,
                    !c.privileged,
                ) {
                    report(stale(ep.devid, Source::Atc, p, cached, pte));
                }
            }
        }
        // IOTLB and walk cache: tables come from an endpoint whose DTE has the domain.
        let regs = *self.regs.read().unwrap();
        let domain_dev = |domain: u16| {
            let dt = regs.devtab?;
            self.endpoints
                .iter()
                .find(|ep| {
                    Dte::read(&mem, dt.base, ep.devid)
                        .ok()
                        .and_then(|d| d.decode(self.cfg.five_level, true).ok())
                        .is_some_and(|d| d.domain_id == domain)
                })
                .map(|ep| ep.devid)
        };
        let tlb = self.iotlb.lock().unwrap();
        for (tag, e) in tlb.entries(pasid, va, len) {
            match domain_dev(tag.domain_id) {
                Some(dev) => {
                    for (p, cached, pte) in check_leaf(
                        dev,
                        e.va_base,
                        e.size_log2,
                        e.pa_base,
                        e.perms.write && e.dirty,
                        e.perms.user,
                    ) {
                        report(stale(0xffff, Source::Iotlb, p, cached, pte));
                    }
                }
                None => report(stale(0xffff, Source::Iotlb, e.va_base, e.pa_base, 0)),
            }
        }
        drop(tlb);
        let pwc = self.pwc.lock().unwrap();
        for (_, base, e) in pwc.entries(pasid, va, len) {
            let now = mem::load_u64(&mem, e.entry.gpa).unwrap_or(0);
            let ignore = walker::PTE_A | walker::PTE_D;
            if (now & !ignore) != (e.entry.value & !ignore) {
                report(stale(
                    0xffff,
                    Source::WalkCache,
                    base.max(va),
                    e.next_table,
                    now,
                ));
            }
        }
        Ok((out, count))
    }

    /// Execute a batch of commands strictly in order (§4.4). `cmds` carries
    /// each command's GPA (for ILLEGAL_COMMAND_ERROR) and its 16 bytes.
    pub fn execute(&self, cmds: &[(u64, [u8; 16])]) -> BatchResult {
        let _serial = self.cmd_lock.lock().unwrap();
        let mut res = BatchResult::default();
        for (i, (gpa, raw)) in cmds.iter().enumerate() {
            let injected = apply_delay(self.faults.check(FaultPoint::Command, None, None));
            let decoded = match injected {
                Some(FaultAction::Fail) => Err(CommandError::Opcode(
                    (u64::from_le_bytes(raw[..8].try_into().unwrap()) >> 60) as u8,
                )),
                _ => Command::decode(raw),
            };
            let cmd = match decoded {
                Ok(c) => c,
                Err(err) => {
                    inc(&self.stats.illegal_commands);
                    log::warn!("illegal command at {gpa:#x}: {err}");
                    self.trace(TraceEvent::IllegalCommand { gpa: *gpa, err });
                    self.log_event(Event::illegal_command(*gpa));
                    res.illegal = Some((i, *gpa, err));
                    return res;
                }
            };
            inc(&self.stats.commands);
            self.trace(TraceEvent::Command { gpa: *gpa, cmd });
            if injected != Some(FaultAction::Drop) {
                if let Err(err) = self.run(cmd, *gpa, &mut res) {
                    inc(&self.stats.illegal_commands);
                    res.illegal = Some((i, *gpa, err));
                    return res;
                }
            }
            res.executed = i + 1;
        }
        res
    }

    fn run(&self, cmd: Command, gpa: u64, res: &mut BatchResult) -> Result<(), CommandError> {
        match cmd {
            Command::CompletionWait {
                store,
                interrupt,
                addr,
                data,
                ..
            } => {
                inc(&self.stats.completion_waits);
                // Every earlier command has completed: execution is synchronous.
                if store && mem::store_u64(&self.memory(), addr, data).is_err() {
                    log::warn!("COMPLETION_WAIT store address {addr:#x} is outside guest RAM");
                    self.log_event(Event::command_hw_error(gpa));
                    return Err(CommandError::Reserved { lo: addr, hi: 0 });
                }
                if interrupt {
                    res.comp_wait_int += 1;
                }
            }
            Command::InvalidateDevtabEntry { devid } => {
                if apply_delay(
                    self.faults
                        .check(FaultPoint::DteInvalidate, Some(devid), None),
                )
                .is_none()
                {
                    self.dte_cache.lock().unwrap().invalidate(devid);
                    self.gen.fetch_add(1, Ordering::AcqRel);
                }
            }
            Command::InvalidateIommuPages {
                domain_id,
                pasid,
                gn,
                pde,
                range,
            } => {
                inc(&self.stats.iommu_invalidations);
                if apply_delay(
                    self.faults
                        .check(FaultPoint::IotlbInvalidate, None, Some(pasid)),
                )
                .is_none()
                {
                    // GN=0 names host (GPA) translations; with Mode 0 there are none.
                    let removed = if gn {
                        let tag = Tag { domain_id, pasid };
                        let mut iotlb = self.iotlb.lock().unwrap();
                        let mut pwc = self.pwc.lock().unwrap();
                        self.gen.fetch_add(1, Ordering::AcqRel);
                        iotlb.invalidate(tag, &range)
                            + if pde { pwc.invalidate(tag, &range) } else { 0 }
                    } else {
                        self.gen.fetch_add(1, Ordering::AcqRel);
                        0
                    };
                    self.trace(TraceEvent::IotlbInvalidate {
                        domain_id,
                        pasid,
                        range,
                        removed,
                    });
                }
            }
            Command::InvalidateIotlbPages {
                devid,
                pasid,
                gn,
                range,
                ..
            } => {
                inc(&self.stats.atc_invalidations);
                let Some(ep) = self.endpoint(devid) else {
                    // Nobody answers the ATS invalidation.
                    self.log_event(Event::iotlb_inv_timeout(devid, gpa));
                    return Ok(());
                };
                let pasid = gn.then_some(pasid);
                match apply_delay(
                    self.faults
                        .check(FaultPoint::AtcInvalidate, Some(devid), pasid),
                ) {
                    Some(FaultAction::Drop) => {
                        log::debug!("ATC invalidation for {devid:#06x} dropped by a fault rule")
                    }
                    Some(_) => self.log_event(Event::iotlb_inv_timeout(devid, gpa)),
                    None => {
                        let removed = ep.gate.invalidate(pasid, &range);
                        self.trace(TraceEvent::AtcInvalidate {
                            devid,
                            pasid,
                            range,
                            removed,
                        });
                    }
                }
            }
            Command::InvalidateInterruptTable { .. } => {}
            Command::CompletePprRequest {
                devid, tag, code, ..
            } => {
                inc(&self.stats.prg_responses);
                self.trace(TraceEvent::PrgResponse {
                    devid,
                    prgi: tag,
                    code,
                });
                if let Some(ep) = self.endpoint(devid) {
                    if self
                        .faults
                        .check(FaultPoint::PriResponse, Some(devid), None)
                        .is_none()
                        && !ep.pri.respond(tag, code)
                    {
                        log::debug!("PRG response for {devid:#06x} with unexpected index {tag}");
                    }
                }
            }
            Command::InvalidateIommuAll => {
                inc(&self.stats.iommu_invalidations);
                if apply_delay(self.faults.check(FaultPoint::IotlbInvalidate, None, None)).is_none()
                {
                    let mut iotlb = self.iotlb.lock().unwrap();
                    let mut pwc = self.pwc.lock().unwrap();
                    self.dte_cache.lock().unwrap().clear();
                    self.gen.fetch_add(1, Ordering::AcqRel);
                    iotlb.clear();
                    pwc.clear();
                }
            }
        }
        Ok(())
    }

    /// Cached entries (IOTLB, walk cache, all ATCs) — for tests and benches.
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        let atc = self.endpoints.iter().map(|e| e.gate.len()).sum();
        (
            self.iotlb.lock().unwrap().len(),
            self.pwc.lock().unwrap().len(),
            atc,
        )
    }
}

/// ATC hits and misses per endpoint, kept locally and added to the shared
/// counters in batches (one atomic add per batch, not per access).
#[derive(Debug, Default)]
struct Tally {
    counts: Vec<(u32, u32)>,
    pending: u32,
}

impl Tally {
    const BATCH: u32 = 1024;

    fn add(&mut self, idx: usize, rep: &AccessReport) {
        if self.counts.len() <= idx {
            self.counts.resize(idx + 1, (0, 0));
        }
        let c = &mut self.counts[idx];
        c.0 += rep.atc_hits;
        c.1 += rep.atc_misses;
        self.pending += 1;
    }

    fn flush_if_due(&mut self, iommu: &Iommu) {
        if self.pending >= Self::BATCH {
            self.flush(iommu);
        }
    }

    fn flush(&mut self, iommu: &Iommu) {
        for (ep, c) in iommu.endpoints.iter().zip(self.counts.iter_mut()) {
            ep.gate.count(c.0, c.1);
            *c = (0, 0);
        }
        self.pending = 0;
    }
}

/// See [`Iommu::port`]. ATC hit/miss counters reach `Iommu::counters` in
/// batches of 1024 accesses and when the port is dropped.
#[derive(Debug)]
pub struct Port<'a> {
    iommu: &'a Iommu,
    gen: u64,
    mem: Arc<Mem>,
    tally: Tally,
}

impl Drop for Port<'_> {
    fn drop(&mut self) {
        self.tally.flush(self.iommu);
    }
}

impl Port<'_> {
    fn refresh(&mut self) {
        let gen = self.iommu.mem_gen.load(Ordering::Acquire);
        if gen != self.gen {
            self.mem = self.iommu.memory().into_inner();
            self.gen = gen;
        }
    }

    /// As [`Iommu::ats_translate`].
    pub fn ats_translate(
        &mut self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
    ) -> Result<AtsCompletion, AccessError> {
        self.refresh();
        self.iommu
            .ats_translate_in(&self.mem, devid, pasid, va, flags)
    }

    /// As [`Iommu::dma_read`].
    pub fn dma_read(
        &mut self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        buf: &mut [u8],
    ) -> Result<AccessReport, AccessError> {
        self.dma(devid, pasid, va, flags, Buf::Read(buf))
    }

    /// As [`Iommu::dma_write`].
    pub fn dma_write(
        &mut self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        data: &[u8],
    ) -> Result<AccessReport, AccessError> {
        self.dma(devid, pasid, va, flags, Buf::Write(data))
    }

    fn dma(
        &mut self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        buf: Buf<'_>,
    ) -> Result<AccessReport, AccessError> {
        let iommu = self.iommu;
        self.refresh();
        let r = iommu.dma(&self.mem, devid, pasid, va, flags, buf, &mut self.tally);
        self.tally.flush_if_due(iommu);
        r
    }
}

enum Buf<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Buf<'_> {
    fn len(&self) -> usize {
        match self {
            Buf::Read(b) => b.len(),
            Buf::Write(d) => d.len(),
        }
    }

    fn is_write(&self) -> bool {
        matches!(self, Buf::Write(_))
    }
}
