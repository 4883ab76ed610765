// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Host runner of the amdvi-bench guest suite (`amdvi-run`).
//!
//! Pure parts (KTAP parsing, console classification, QEMU and kernel command
//! lines, the cpio writer, module ordering, the verdict) live in their own
//! modules with unit tests; `run` does the process work.

pub mod cli;
pub mod console;
pub mod cpio;
pub mod error;
pub mod guest_kernel;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod kmod;
pub mod ktap;
pub mod plan;
pub mod qemu;
pub mod report;
pub mod run;
pub mod scripts;
pub mod soak;
pub mod summary;
pub mod supervise;
