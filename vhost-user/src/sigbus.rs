//! Surviving a guest memory file that the frontend shrinks after
//! SET_MEM_TABLE. The region check in [`crate::relay`] refuses a table whose
//! regions reach past their files, but a frontend can still truncate a
//! file later; the next access past the new end raises SIGBUS.
//!
//! Refusing files that can shrink (memfds without F_SEAL_SHRINK) would
//! refuse QEMU's memory-backend-file and memory-backend-memfd with
//! `seal=off`, so the daemon takes the approach of libwayland's wl_shm
//! pools instead: a SIGBUS handler that finds the faulting address in a
//! registered guest region, maps anonymous memory over the whole region
//! (the access is retried and sees zeros), and signals the connection's
//! eventfd. The relay then ends the connection with a clear error. A SIGBUS
//! anywhere else restores the default action and is re-raised.
//!
//! The registry is a fixed table of atomics: the handler takes no lock and
//! calls only mmap(2) and write(2).

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Once;

use iommu_dev::Mem;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

const SLOTS: usize = 256;

struct Slot {
    /// Host address of the mapping; 0 = free.
    start: AtomicUsize,
    len: AtomicUsize,
    /// The eventfd to write when the region faulted.
    fd: AtomicI32,
    /// Owner tag, to unregister a connection's regions.
    owner: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    fd: AtomicI32::new(-1),
    owner: AtomicUsize::new(0),
};
static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
static INSTALL: Once = Once::new();

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &TABLE {
        let start = s.start.load(Ordering::Acquire);
        let len = s.len.load(Ordering::Acquire);
        if start == 0 || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: the range is a guest-memory mapping of this process (it is
        // registered while mapped); replacing it with anonymous memory of
        // the same size keeps every pointer into it valid.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            let one = 1u64.to_ne_bytes();
            // SAFETY: write(2) on an eventfd with a valid 8-byte buffer.
            unsafe { libc::write(s.fd.load(Ordering::Acquire), one.as_ptr().cast(), 8) };
            return;
        }
        break;
    }
    // Not a guest region (or the remap failed): die of SIGBUS as before.
    // SAFETY: resetting a signal disposition is async-signal-safe; the
    // faulting access is retried on return and raises SIGBUS again.
    unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
                log::warn!(
                    "cannot install the SIGBUS handler: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// Register the file-backed regions of `mem` for `owner`; `fd` is written
/// when one of them faults. Regions of earlier tables stay registered until
/// [`unregister`] (endpoint work may still hold an earlier table). Fails
/// when the table is full: the caller refuses the memory table rather than
/// run unprotected.
pub fn register(owner: usize, mem: &Mem, fd: i32) -> std::io::Result<()> {
    install();
    for r in mem.iter() {
        if r.file_offset().is_none() {
            continue;
        }
        let (start, len) = (r.as_ptr() as usize, r.len() as usize);
        let known = TABLE.iter().any(|s| {
            s.owner.load(Ordering::Acquire) == owner
                && s.start.load(Ordering::Acquire) == start
                && s.len.load(Ordering::Acquire) == len
        });
        if known {
            continue;
        }
        let Some(s) = TABLE.iter().find(|s| {
            s.owner
                .compare_exchange(0, owner, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        }) else {
            return Err(std::io::Error::other(format!(
                "the SIGBUS registry is full ({SLOTS} regions): region at host address {start:#x} cannot be protected"
            )));
        };
        s.len.store(len, Ordering::Release);
        s.fd.store(fd, Ordering::Release);
        s.start.store(start, Ordering::Release);
    }
    Ok(())
}

/// Forget the regions of `owner` (its memory is about to be unmapped).
pub fn unregister(owner: usize) {
    for s in &TABLE {
        if s.owner.load(Ordering::Acquire) == owner {
            s.start.store(0, Ordering::Release);
            s.fd.store(-1, Ordering::Release);
            s.owner.store(0, Ordering::Release);
        }
    }
}
