//! The public types of the IOMMU model: configuration, access flags and
//! reports, errors, batch results, the STATS counters and trace records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ats::{AtcGate, AtsCompletion, Pri};
use crate::command::{Command, CommandError};
use crate::mem::MemError;
use crate::oracle::Finding;
use crate::regs::PASID_BITS;
use crate::srange::SRange;
use crate::walker::WalkFault;

/// Parameters of the modelled unit. The defaults are the daemon's
/// (`configs/default.toml`).
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
    /// Whether a page request drops the IOTLB entry of its page
    /// (docs/amd-iommu.md §8.4).
    pub ats_permission_miss: PermissionMiss,
}

/// What the IOTLB does with its entry for a page the device sent a page
/// request for (docs/fault-injection.md, "ats_permission_miss").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PermissionMiss {
    /// Drop it (default), as an x86 TLB drops the entry of a faulting
    /// address: the translation request after PRI Success walks the tables.
    /// Linux raises permissions without an invalidation (wp_page_reuse()),
    /// so this is what makes a write-fault upgrade work.
    #[default]
    Rewalk,
    /// Keep answering from it until an invalidation removes it: after a
    /// write-fault upgrade the device retranslates to the read-only entry
    /// and gives up after 8 rounds (the write is lost).
    Cached,
}

impl PermissionMiss {
    pub fn name(&self) -> &'static str {
        match self {
            PermissionMiss::Rewalk => "rewalk",
            PermissionMiss::Cached => "cached",
        }
    }
}

impl std::str::FromStr for PermissionMiss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rewalk" => Ok(PermissionMiss::Rewalk),
            "cached" => Ok(PermissionMiss::Cached),
            o => Err(format!("unknown value '{o}' (expected rewalk or cached)")),
        }
    }
}

impl Default for IommuConfig {
    fn default() -> Self {
        IommuConfig {
            endpoints: vec![0x0010, 0x0011],
            iotlb_entries: 4096,
            pwc_entries: 256,
            dte_cache_entries: 64,
            atc_entries: 512,
            oracle: true,
            oracle_records: 4096,
            five_level: true,
            pri_timeout: Duration::from_millis(2000),
            event_log_entries: 512,
            ppr_log_entries: 512,
            ats_permission_miss: PermissionMiss::Rewalk,
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

impl AccessFlags {
    /// A user access through the ATC without PRI: a fault fails it at once.
    pub const NO_PRI: Self = AccessFlags {
        privileged: false,
        exec: false,
        no_write: false,
        no_pri: true,
        atc_only: false,
        untranslated: false,
    };
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

pub(super) fn inc(c: &AtomicU64) {
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
