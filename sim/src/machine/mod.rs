//! One execution of a script: the program a script flattens into and the
//! footprints of its steps ([`program`]), what the steps run on
//! ([`backend`]: the [`Backend`] trait and the iommu-dev [`Model`]), and the
//! execution itself with its data checks and findings ([`exec`]).
//!
//! Actors: 0 is the CPU, 1 the IOMMU command processor (it executes posted
//! commands one per step), 2.. the device threads, each step atomic. Every
//! step has a footprint (what it reads and writes) used by the explorer's
//! reduction and to cut counterexamples down to what matters.

pub mod backend;
pub mod exec;
pub mod program;

pub use backend::{Backend, BackendError, DmaResult, Model};
pub use exec::{Exec, ExecError, Found, Rec, Writer};
pub use program::{res, Cmd, CpuStep, Fp, Program};

// The simulated guest memory: device table, GCR3 table, completion-wait
// store, command buffer, page-table pool and the script's pages.
pub const DEVTAB_GPA: u64 = 0x1000;
pub const GCR3_GPA: u64 = 0x2000;
pub const CW_GPA: u64 = 0x3000;
pub const CMDBUF_GPA: u64 = 0x4000;
pub const PT_POOL: u64 = 0x1_0000;
pub const PT_POOL_END: u64 = 0x4_0000;
pub const DATA_BASE: u64 = 0x4_0000;
pub const MEM_SIZE: usize = 0x8_0000;
pub const DOMAIN_ID: u16 = 1;
/// The address bits of a PTE.
pub(crate) const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Non-present PTEs standing for a swap and a migration entry.
pub(crate) const SWAP_PTE: u64 = 0x5a5a_5000;
pub(crate) const MIGRATION_PTE: u64 = 0x3c3c_3000;

pub const CPU: usize = 0;
pub const IOMMU: usize = 1;
/// Actor of the final data check.
pub const END: usize = usize::MAX;
