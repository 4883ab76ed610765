//! The IOMMU: the [`Iommu`] state with its registers, caches, logs and
//! endpoints. The work is split by concern: [`types`] holds the public types
//! and stats, `translate` the DTE lookup, translate and fill, `access` ATS,
//! DMA and PRI, `audit` the oracle check and the audit, `commands` the
//! command processor, and [`port`] the per-thread [`Port`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use vm_memory::atomic::GuestMemoryLoadGuard;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

use crate::ats::{AtcGate, Pri};
use crate::cache::{DteCache, Iotlb, Pwc};
use crate::dte::DteInfo;
use crate::event::{Event, Log};
use crate::fault::FaultInjector;
use crate::mem::{self, Mem};
use crate::oracle::Oracle;
use crate::regs::{control, efr_image, DevTableBase, RegError};

mod access;
mod audit;
mod commands;
pub mod port;
mod sample;
mod translate;
pub mod types;

pub use port::Port;
pub use sample::{user_leaves, MappedLeaf};
pub use types::{
    AccessError, AccessFlags, AccessReport, BatchResult, Endpoint, IommuConfig, PermissionMiss,
    Stats, TraceEvent, Tracer,
};

#[derive(Debug, Clone, Copy, Default)]
struct Regs {
    devtab: Option<DevTableBase>,
    control: u64,
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
    /// Invalidations a `defer` fault rule holds back until the next batch
    /// (command GPA, command).
    deferred: Mutex<Vec<(u64, crate::command::Command)>>,
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
            deferred: Mutex::new(Vec::new()),
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
        self.deferred.lock().unwrap().clear();
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
