//! What an execution runs on: the [`Backend`] trait with its
//! [`BackendError`], and [`Model`], the iommu-dev model on simulated guest
//! memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use iommu_dev::mem::{self, Mem};
use iommu_dev::pgtable::{self, Tables};
use iommu_dev::{
    AccessError, AccessFlags, AtsCompletion, Command, CommandError, DevTableBase, Dte, FaultRule,
    Finding, Iommu, IommuConfig, TraceEvent, Tracer,
};
use vm_memory::GuestMemoryAtomic;

use super::{
    CMDBUF_GPA, DATA_BASE, DEVTAB_GPA, DOMAIN_ID, GCR3_GPA, MEM_SIZE, PT_POOL, PT_POOL_END,
};
use crate::script::{Script, MAX_PAGES};

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

/// A backend could not do what a step asked (a failure of the machinery,
/// not a finding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The model's command processor stopped at an illegal command.
    #[error("illegal command: {0}")]
    IllegalCommand(CommandError),
    /// The model refused a request.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// Another backend's failure, in its own words (a failed ioctl, a
    /// command the real device cannot issue).
    #[error("{0}")]
    Device(String),
}

/// What [`Backend::access`] returns: the translation used and the value
/// read or written.
pub type DmaResult = Result<(AtsCompletion, u64), AccessError>;

/// What an execution runs on: the iommu-dev model with simulated guest
/// memory ([`Model`]), or a real device (the guest's `amdvi-script`, which
/// drives the daemon through `/dev/amdvi`). The judging (data checks,
/// findings, timeline) is the same [`Exec`](super::Exec) code for both.
///
/// Pages are the script's pages by index; `pa` arguments are physical
/// addresses of words inside them (`page_pa(page) | offset`).
pub trait Backend {
    /// Back to the script's initial state: no mappings, every page zero,
    /// empty caches, no findings. An error makes the execution fail.
    fn reset(&mut self) -> Result<(), BackendError>;
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
    fn execute(&mut self, cmd: &Command) -> Result<Option<usize>, BackendError>;
    /// Device `dev` (index into the script's devices) sends an ATS
    /// translation request for `va`; a successful completion fills its ATC.
    fn translate(&mut self, dev: usize, va: u64) -> Result<AtsCompletion, AccessError>;
    /// An 8-byte DMA read (`write` None; the value read is returned) or
    /// write by device `dev`, through its ATC: the translation used and the
    /// value. A backend whose device translates on a miss itself returns
    /// `Fault` for a failed translation and never `AtcMiss`.
    fn access(&mut self, dev: usize, va: u64, write: Option<u64>) -> DmaResult;
    /// Per-access oracle findings since the last call (and clear them).
    fn oracle(&mut self) -> Vec<Finding>;
    /// Audit every cached translation of `pasid`: the stale ones.
    fn audit(&mut self, pasid: u32) -> Result<Vec<Finding>, BackendError>;
}

/// The iommu-dev model on simulated guest memory, built with the guest
/// fixture (`iommu_dev::pgtable`): a DTE per device, a one-level GCR3
/// table, 4-level tables from a pool, pages at `DATA_BASE`.
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
        let dte = Dte::encode_v2(DOMAIN_ID, GCR3_GPA, 0, true, false);
        for &devid in &self.devids {
            pgtable::write_dte(mem, DEVTAB_GPA, devid, &dte);
        }
        // A one-level GCR3 table: the entry of the script's PASID.
        pgtable::write_gcr3_entry(mem, GCR3_GPA, u64::from(self.pasid), cr3);
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

    /// The script's 4-level tables, new tables from the pool up to
    /// `PT_POOL_END`.
    fn tables(&self) -> Tables<'_> {
        Tables::resume(&self.mem, 4, self.cr3, self.next_table).with_pool_end(PT_POOL_END)
    }

    fn read_page(&self, page: usize) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        mem::read(&self.mem, page_gpa(page), &mut b).expect("page");
        b
    }
}

impl Backend for Model {
    fn reset(&mut self) -> Result<(), BackendError> {
        self.iommu.reset();
        self.iommu.faults().clear();
        mem::write(&self.mem, 0, &vec![0u8; MEM_SIZE]).expect("guest memory");
        self.setup();
        Ok(())
    }

    fn pte(&mut self, va: u64) -> u64 {
        self.tables().try_get(va, 1)
    }

    fn set_pte(&mut self, va: u64, v: u64) {
        let mut t = self.tables();
        t.set_alloc(va, 1, v);
        self.next_table = t.pool_next();
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

    fn execute(&mut self, cmd: &Command) -> Result<Option<usize>, BackendError> {
        self.removed.0.store(0, Ordering::Relaxed);
        let r = self.iommu.execute(&[(CMDBUF_GPA, cmd.encode())]);
        if let Some((_, _, e)) = r.illegal {
            return Err(BackendError::IllegalCommand(e));
        }
        Ok(Some(self.removed.0.load(Ordering::Relaxed)))
    }

    fn translate(&mut self, dev: usize, va: u64) -> Result<AtsCompletion, AccessError> {
        self.iommu
            .ats_translate(self.devids[dev], self.pasid, va, dev_flags())
    }

    fn access(&mut self, dev: usize, va: u64, write: Option<u64>) -> DmaResult {
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

    fn audit(&mut self, pasid: u32) -> Result<Vec<Finding>, BackendError> {
        self.iommu
            .audit(pasid, 0, u64::MAX, 16)
            .map(|(fs, _)| fs)
            .map_err(BackendError::from)
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
