//! A model of an AMD IOMMUv2-like unit with ATS endpoints, for testing how
//! the kernel orders mmu_notifier invalidations against a hardware walker.
//!
//! It works on the AMD binary formats (`docs/amd-iommu.md`;
//! "§n" in comments points there): 256-bit DTEs, GCR3 tables, the x86-64
//! guest page tables of the CPU (4 and 5 levels), 128-bit commands, event and
//! PPR log entries, ATS completions. Everything it reads or writes goes
//! through vm-memory, so an address outside guest RAM becomes an AMD
//! hardware-error event, never a host access.
//!
//! The entry point is [`Iommu`]: program it with [`Iommu::set_device_table`],
//! send commands with [`Iommu::execute`], let endpoints translate and access
//! memory with [`Iommu::ats_translate`], [`Iommu::dma_read`] and
//! [`Iommu::dma_write`], drain [`Iommu::event_log`] and [`Iommu::ppr_log`],
//! and ask the coherence oracle ([`oracle`]) what went wrong.

pub mod ats;
pub mod cache;
pub mod command;
pub mod dte;
pub mod event;
pub mod fault;
pub mod iommu;
pub mod mem;
mod names;
pub mod oracle;
pub mod pgtable;
pub mod regs;
pub mod srange;
pub mod walker;

pub use ats::AtsCompletion;
pub use command::{Command, CommandError};
pub use dte::{Dte, DteInfo};
pub use event::{Event, EventCode, Log, LogRecord, PprEntry};
pub use fault::{FaultAction, FaultError, FaultInjector, FaultPoint, FaultRule};
pub use iommu::{
    AccessError, AccessFlags, AccessReport, BatchResult, Iommu, IommuConfig, PermissionMiss, Port,
    TraceEvent, Tracer,
};
pub use mem::{Mem, MemError};
pub use oracle::{Finding, Rule, Source};
pub use regs::{control, efr, efr_image, DevTableBase, RegError};
pub use srange::SRange;
