//! A small x86-64 page-table builder over guest memory: what a CPU-side
//! kernel would write, for tests, benches, the simulator and test drivers.

use crate::mem::{self, Mem};
use crate::walker::{index, ADDR_MASK, PTE_P, PTE_PS, PTE_RW, PTE_US};

/// Flags for directory entries: present, writable, user.
pub const DIR: u64 = PTE_P | PTE_RW | PTE_US;
/// Flags for a user read-write leaf.
pub const USER_RW: u64 = PTE_P | PTE_RW | PTE_US;

/// Page tables rooted at `cr3`, with new tables taken from a bump pool.
#[derive(Debug)]
pub struct Tables<'a> {
    pub mem: &'a Mem,
    pub levels: u8,
    pub cr3: u64,
    next: u64,
}

impl<'a> Tables<'a> {
    /// The root table is at `pool`; further tables are allocated upwards
    /// from `pool + 4 KiB`. The pool must be zeroed guest RAM.
    pub fn new(mem: &'a Mem, levels: u8, pool: u64) -> Self {
        Tables {
            mem,
            levels,
            cr3: pool,
            next: pool + 0x1000,
        }
    }

    /// Tables at `cr3` that already exist, new ones allocated from `next`.
    pub fn resume(mem: &'a Mem, levels: u8, cr3: u64, next: u64) -> Self {
        Tables {
            mem,
            levels,
            cr3,
            next,
        }
    }

    /// The next free pool address.
    pub fn pool_next(&self) -> u64 {
        self.next
    }

    fn alloc(&mut self) -> u64 {
        let t = self.next;
        self.next += 0x1000;
        t
    }

    /// Map `va` to `pa` with a leaf at `leaf_level` (1: 4 KiB, 2: 2 MiB,
    /// 3: 1 GiB) carrying `flags`; directory entries on the way get `dir`.
    /// Returns the GPA of the leaf entry.
    pub fn map(&mut self, va: u64, pa: u64, leaf_level: u8, flags: u64, dir: u64) -> u64 {
        let mut table = self.cr3;
        let mut level = self.levels;
        loop {
            let gpa = table + 8 * index(va, level);
            if level == leaf_level {
                let ps = if leaf_level > 1 { PTE_PS } else { 0 };
                mem::store_u64(self.mem, gpa, pa | flags | ps).expect("leaf entry in RAM");
                return gpa;
            }
            let e = mem::load_u64(self.mem, gpa).expect("table entry in RAM");
            // A large leaf on the way is replaced by a new table (a split).
            let is_table = e & PTE_P != 0 && (e & PTE_PS == 0 || level > 3);
            let next = if is_table {
                e & ADDR_MASK
            } else {
                self.alloc()
            };
            mem::store_u64(self.mem, gpa, next | dir).expect("table entry in RAM");
            table = next;
            level -= 1;
        }
    }

    /// Map a 4 KiB user read-write page.
    pub fn map_4k(&mut self, va: u64, pa: u64) -> u64 {
        self.map(va, pa, 1, USER_RW, DIR)
    }

    /// GPA of the entry for `va` at `level`; the tables above must exist.
    pub fn entry_gpa(&self, va: u64, level: u8) -> u64 {
        self.try_entry_gpa(va, level)
            .expect("tables above the entry exist")
    }

    /// GPA of the entry for `va` at `level`, or None when a present table
    /// entry inside guest RAM does not lead there.
    pub fn try_entry_gpa(&self, va: u64, level: u8) -> Option<u64> {
        let mut table = self.cr3;
        let mut l = self.levels;
        loop {
            let gpa = table + 8 * index(va, l);
            if l == level {
                return Some(gpa);
            }
            let e = mem::load_u64(self.mem, gpa).ok()?;
            if e & PTE_P == 0 || (e & PTE_PS != 0 && l <= 3) {
                return None;
            }
            table = e & ADDR_MASK;
            l -= 1;
        }
    }

    /// Read the entry for `va` at `level`.
    pub fn get(&self, va: u64, level: u8) -> u64 {
        mem::load_u64(self.mem, self.entry_gpa(va, level)).expect("entry in RAM")
    }

    /// Write the entry for `va` at `level` (as the CPU does with set_pte).
    pub fn set(&self, va: u64, level: u8, value: u64) {
        mem::store_u64(self.mem, self.entry_gpa(va, level), value).expect("entry in RAM");
    }
}
