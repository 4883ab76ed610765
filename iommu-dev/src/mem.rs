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

/// Host address of `[gpa, gpa + len)` when it lies inside one region.
fn host_range(mem: &Mem, gpa: u64, len: usize) -> Result<*mut u8, MemError> {
    let err = MemError { gpa, len };
    let region = mem.find_region(GuestAddress(gpa)).ok_or(err)?;
    let off = gpa - region.start_addr().0;
    if off
        .checked_add(len as u64)
        .is_none_or(|end| end > region.len())
    {
        return Err(err);
    }
    region
        .get_host_address(vm_memory::MemoryRegionAddress(off))
        .map_err(|_| err)
}

/// Copy guest memory into `buf` (DMA read). A range crossing regions, or
/// partly outside RAM, takes vm-memory's checked path.
pub fn read(mem: &Mem, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
    match host_range(mem, gpa, buf.len()) {
        // SAFETY: `host_range` checked that the `buf.len()` bytes at `src` lie
        // inside one mapped region of `mem`, which stays mapped while `mem` is
        // borrowed; `buf` is host memory of the caller and cannot overlap it.
        // Concurrent guest writes are the DMA race hardware has too.
        Ok(src) => unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) },
        Err(_) => mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError {
                gpa,
                len: buf.len(),
            })?,
    }
    Ok(())
}

/// Copy `data` into guest memory (DMA write).
pub fn write(mem: &Mem, gpa: u64, data: &[u8]) -> Result<(), MemError> {
    match host_range(mem, gpa, data.len()) {
        // SAFETY: as in `read`: the destination lies inside one mapped region
        // of `mem` and does not overlap the caller's `data`.
        Ok(dst) => unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) },
        Err(_) => mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| MemError {
                gpa,
                len: data.len(),
            })?,
    }
    Ok(())
}

/// Guest RAM for a device's DMA copies: the memory map, held so that its
/// regions stay mapped, and the last region a copy used as a host address
/// range, valid for as long as this memory map (one memory-map generation):
/// a copy into it costs a bounds check, not a region lookup. Derefs to the
/// memory map for everything else.
#[derive(Debug)]
pub struct Ram {
    mem: std::sync::Arc<Mem>,
    last: std::cell::Cell<HostRegion>,
}

/// A region of `Ram::mem` as GPA, length and host address (empty: len 0).
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    base: u64,
    len: u64,
    host: *mut u8,
}

// SAFETY: `last` only ever points into a region of `mem`, which the Arc
// keeps mapped wherever the `Ram` goes; moving it to another thread moves
// the Arc with it. (`Ram` is not Sync: the Cell is per thread.)
unsafe impl Send for Ram {}

impl std::ops::Deref for Ram {
    type Target = Mem;
    fn deref(&self) -> &Mem {
        &self.mem
    }
}

impl Ram {
    pub fn new(mem: std::sync::Arc<Mem>) -> Ram {
        Ram {
            mem,
            last: std::cell::Cell::new(HostRegion {
                base: 0,
                len: 0,
                host: std::ptr::null_mut(),
            }),
        }
    }

    /// Host address of `[gpa, gpa + len)` when it lies in one region.
    #[inline]
    fn host(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let r = self.last.get();
        let off = gpa.wrapping_sub(r.base);
        if off < r.len && len as u64 <= r.len - off {
            return Some(r.host.wrapping_add(off as usize));
        }
        self.refill(gpa, len)
    }

    #[cold]
    fn refill(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let region = self.mem.find_region(GuestAddress(gpa))?;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .ok()?;
        let r = HostRegion {
            base: region.start_addr().0,
            len: region.len(),
            host,
        };
        self.last.set(r);
        let off = gpa - r.base;
        (len as u64 <= r.len - off).then(|| host.wrapping_add(off as usize))
    }

    /// As [`read`].
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        match self.host(gpa, buf.len()) {
            // SAFETY: `host` checked that the `buf.len()` bytes at `src` lie
            // inside one region of `self.mem`, mapped while `self` holds it;
            // `buf` is host memory of the caller and cannot overlap it.
            // Concurrent guest writes are the DMA race hardware has too.
            Some(src) => unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) },
            None => return read(&self.mem, gpa, buf),
        }
        Ok(())
    }

    /// As [`write`].
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        match self.host(gpa, data.len()) {
            // SAFETY: as in `read`: the destination lies inside one region of
            // `self.mem` and does not overlap the caller's `data`.
            Some(dst) => unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) },
            None => return write(&self.mem, gpa, data),
        }
        Ok(())
    }
}

/// Guest RAM as 64-bit atomic words, remembering the last region used: the
/// walker's view of page tables (one region lookup per walk, not per entry,
/// and none while the tables stay in that region).
#[derive(Debug)]
pub struct Words<'a> {
    mem: &'a Mem,
    win: Window<'a>,
}

/// One region of guest RAM as words: what [`Words`] caches, small enough
/// for a walk to keep in registers.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    /// GPA and length in bytes of the region (empty: `len` 0); `base` is
    /// 8-byte aligned and `len` a multiple of 8.
    base: u64,
    len: u64,
    /// Host address of GPA 0 if the region extended down to it: a word's
    /// host address is `host0 + gpa`, one addition on the walker's chain
    /// of dependent loads. Only dereferenced for a GPA inside the region.
    host0: *const u8,
    _region: std::marker::PhantomData<&'a [AtomicU64]>,
}

// SAFETY: a `Window` stands for the `&'a [AtomicU64]` of its region, which
// stays mapped for 'a whichever thread holds it and is only read and written
// through atomics; that slice reference is Send and Sync.
unsafe impl Send for Window<'_> {}
// SAFETY: as for Send.
unsafe impl Sync for Window<'_> {}

impl<'a> Window<'a> {
    const EMPTY: Window<'a> = Window {
        base: 0,
        len: 0,
        host0: std::ptr::null(),
        _region: std::marker::PhantomData,
    };

    /// The word at the 8-byte-aligned `gpa` when it lies in this region.
    #[inline(always)]
    pub fn get(&self, gpa: u64) -> Option<&'a AtomicU64> {
        let off = gpa.wrapping_sub(self.base);
        if gpa % 8 == 0 && off < self.len {
            let p = self.host0.wrapping_add(gpa as usize);
            // SAFETY: an aligned `off < len` is a whole word inside the
            // region, whose host mapping (from `host0 + base`, `len` bytes,
            // 8-byte aligned) stays valid for 'a. `AtomicU64` has the
            // layout of `u64`, and other threads and the guest may change
            // the word at any time, which atomics permit.
            return Some(unsafe { &*(p as *const AtomicU64) });
        }
        None
    }
}

impl<'a> Words<'a> {
    pub fn new(mem: &'a Mem) -> Self {
        Words {
            mem,
            win: Window::EMPTY,
        }
    }

    /// The word at the 8-byte-aligned `gpa`.
    #[inline]
    pub fn get(&mut self, gpa: u64) -> Result<&'a AtomicU64, MemError> {
        match self.win.get(gpa) {
            Some(w) => Ok(w),
            None => self.refill(gpa),
        }
    }

    /// The cached region; when nothing is cached yet, the one holding
    /// `gpa` (if any: the window may be empty).
    #[inline]
    pub fn window_or_fill(&mut self, gpa: u64) -> Window<'a> {
        if self.win.len == 0 {
            let _ = self.refill(gpa);
        }
        self.win
    }

    #[cold]
    fn refill(&mut self, gpa: u64) -> Result<&'a AtomicU64, MemError> {
        let err = MemError { gpa, len: 8 };
        if gpa % 8 != 0 {
            return Err(err);
        }
        let region = self.mem.find_region(GuestAddress(gpa)).ok_or(err)?;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| err)?;
        let base = region.start_addr().0;
        if host as usize % std::mem::align_of::<AtomicU64>() != 0 || base % 8 != 0 {
            return Err(err);
        }
        // `host` maps `region.len()` bytes from `base` for as long as
        // `self.mem` is borrowed ('a).
        self.win = Window {
            base,
            len: region.len() & !7,
            host0: (host as *const u8).wrapping_sub(base as usize),
            _region: std::marker::PhantomData,
        };
        self.win.get(gpa).ok_or(err)
    }

    #[inline]
    pub fn load(&mut self, gpa: u64) -> Result<u64, MemError> {
        Ok(self.get(gpa)?.load(Ordering::Acquire))
    }

    #[inline]
    pub fn cmpxchg(&mut self, gpa: u64, old: u64, new: u64) -> Result<Result<u64, u64>, MemError> {
        Ok(self
            .get(gpa)?
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire))
    }
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
    fn two_regions_words_and_copies() {
        let mem = Mem::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x1_0000), 0x1_0000),
        ])
        .unwrap();
        let mut w = Words::new(&mem);
        store_u64(&mem, 0xfff8, 1).unwrap();
        store_u64(&mem, 0x1_0000, 2).unwrap();
        assert_eq!(
            (
                w.load(0xfff8).unwrap(),
                w.load(0x1_0000).unwrap(),
                w.load(0xfff8).unwrap()
            ),
            (1, 2, 1)
        );
        assert!(w.load(0x2_0000).is_err() && w.load(0xfff4).is_err());
        // A copy across the region boundary takes the checked path.
        write(&mem, 0xfffc, &[7; 8]).unwrap();
        let mut b = [0u8; 8];
        read(&mem, 0xfffc, &mut b).unwrap();
        assert_eq!(b, [7; 8]);
        assert!(read(&mem, 0x1_fffc, &mut b).is_err());
        assert!(write(&mem, u64::MAX - 2, &b).is_err());
    }

    /// A `Ram` copies through the region it used last and moves to another
    /// one as needed; a copy across regions or outside RAM takes the
    /// checked path, as `read` and `write` do.
    #[test]
    fn ram_caches_a_region() {
        let mem = Mem::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x2_0000), 0x1_0000),
        ])
        .unwrap();
        let ram = Ram::new(std::sync::Arc::new(mem.clone()));
        let mut b = [0u8; 8];
        for gpa in [0x100u64, 0x2_0100, 0x200, 0x2_fff8] {
            ram.write(gpa, &gpa.to_le_bytes()).unwrap();
            ram.read(gpa, &mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b), gpa);
            assert_eq!(load_u64(&mem, gpa).unwrap(), gpa);
        }
        assert!(
            ram.read(0xfffc, &mut b).is_err(),
            "runs past the region into a hole"
        );
        assert!(ram.read(0x1_8000, &mut b).is_err(), "in the hole");
        assert!(ram.write(0x2_fffc, &b).is_err(), "past the end of RAM");
        assert!(ram.read(u64::MAX - 3, &mut b).is_err());
        ram.read(0xfff8, &mut b).unwrap();
        assert_eq!(b, [0; 8]);
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
