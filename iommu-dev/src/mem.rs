//! Guest memory access for the IOMMU: every read and write of a DTE, GCR3 entry,
//! page-table entry or DMA buffer goes through vm-memory, so an address outside
//! guest RAM is an error value and never a host access.

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    VolatileMemory,
};

/// The guest memory type the model works on (QEMU's regions in the daemon,
/// anonymous mappings in tests).
pub type Mem = GuestMemoryMmap<()>;

/// An access to guest memory that does not lie entirely inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest physical address {gpa:#x} (+{len}) is outside guest RAM")]
pub struct MemError {
    pub gpa: u64,
    pub len: usize,
}

/// Run `f` on the 8-byte-aligned guest word at `gpa` as an `AtomicU64`.
fn with_atomic<R>(mem: &Mem, gpa: u64, f: impl FnOnce(&AtomicU64) -> R) -> Result<R, MemError> {
    let err = MemError { gpa, len: 8 };
    if gpa % 8 != 0 {
        return Err(err);
    }
    let addr = GuestAddress(gpa);
    let region = mem.find_region(addr).ok_or(err)?;
    let offset = region.to_region_addr(addr).ok_or(err)?.0 as usize;
    let slice = region.as_volatile_slice().map_err(|_| err)?;
    let a = slice.get_atomic_ref::<AtomicU64>(offset).map_err(|_| err)?;
    Ok(f(a))
}

/// Atomic 64-bit load of a table entry (8-byte aligned).
pub fn load_u64(mem: &Mem, gpa: u64) -> Result<u64, MemError> {
    with_atomic(mem, gpa, |a| a.load(Ordering::Acquire))
}

/// Atomic 64-bit store (COMPLETION_WAIT data, test set-up).
pub fn store_u64(mem: &Mem, gpa: u64, val: u64) -> Result<(), MemError> {
    with_atomic(mem, gpa, |a| a.store(val, Ordering::Release))
}

/// Locked compare-exchange of a table entry, as the walker's A/D update
/// (x86 `lock cmpxchg`). `Ok(Err(current))` when the entry changed.
pub fn cmpxchg_u64(mem: &Mem, gpa: u64, old: u64, new: u64) -> Result<Result<u64, u64>, MemError> {
    with_atomic(mem, gpa, |a| {
        a.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
    })
}

/// Copy guest memory into `buf`.
pub fn read(mem: &Mem, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
    mem.read_slice(buf, GuestAddress(gpa))
        .map_err(|_| MemError {
            gpa,
            len: buf.len(),
        })
}

/// Copy `data` into guest memory.
pub fn write(mem: &Mem, gpa: u64, data: &[u8]) -> Result<(), MemError> {
    mem.write_slice(data, GuestAddress(gpa))
        .map_err(|_| MemError {
            gpa,
            len: data.len(),
        })
}

/// Whether `[gpa, gpa + len)` lies entirely in guest RAM.
pub fn in_ram(mem: &Mem, gpa: u64, len: u64) -> bool {
    len == 0
        || usize::try_from(len).is_ok_and(|len| {
            GuestMemory::check_range(
                mem,
                GuestAddress(gpa),
                len,
                vm_memory::Permissions::ReadWrite,
            )
        })
}

/// Guest memory of `size` bytes at GPA 0, for tests, benches and the simulator.
pub fn anon(size: usize) -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), size)]).expect("anonymous guest memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_ram_is_an_error() {
        let mem = anon(0x10000);
        assert_eq!(
            load_u64(&mem, 0x10000),
            Err(MemError {
                gpa: 0x10000,
                len: 8
            })
        );
        assert!(load_u64(&mem, 0xfff8).is_ok());
        assert!(load_u64(&mem, 4).is_err(), "misaligned entry");
        let mut b = [0u8; 16];
        assert!(read(&mem, 0xfff8, &mut b).is_err());
        assert!(write(&mem, u64::MAX - 3, &b).is_err());
        assert!(in_ram(&mem, 0, 0x10000));
        assert!(!in_ram(&mem, 0, 0x10001));
        assert!(!in_ram(&mem, u64::MAX, 2));
    }

    #[test]
    fn cmpxchg_sees_changes() {
        let mem = anon(0x1000);
        store_u64(&mem, 8, 5).unwrap();
        assert_eq!(cmpxchg_u64(&mem, 8, 5, 7).unwrap(), Ok(5));
        assert_eq!(cmpxchg_u64(&mem, 8, 5, 9).unwrap(), Err(7));
        assert_eq!(load_u64(&mem, 8).unwrap(), 7);
    }
}
