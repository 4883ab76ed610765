//! The guest fixture: what a guest kernel and its AMD IOMMU driver write in
//! guest memory before a device translates, built in one place for the
//! model's tests and benches, the ordering simulator's model backend and the
//! daemon's test frontend. x86-64 page tables (4 or 5 levels) with table
//! pages from a bump pool, device-table entries and GCR3 table entries.
//!
//! It is public and not behind a `test-utils` feature (as virtio-queue keeps
//! its mock) because a shipped program needs it: `amdvi-sim`'s model backend
//! (`sim/src/machine/backend.rs`) builds its simulated guest with it outside
//! any test. A feature that the simulator's normal build always enables would
//! be on in every workspace build that includes the simulator, and would
//! only rename the module, not keep it out of anything.

use crate::dte::{Dte, GCR3_VALID};
use crate::mem::{self, Mem};
use crate::walker::{index, ADDR_MASK, PTE_P, PTE_PS, PTE_RW, PTE_US};

/// Flags for directory entries: present, writable, user.
pub const DIR: u64 = PTE_P | PTE_RW | PTE_US;
/// Flags for a user read-write leaf.
pub const USER_RW: u64 = PTE_P | PTE_RW | PTE_US;

/// Size of a table page.
const PAGE: u64 = 0x1000;

/// Page tables rooted at `cr3`, with new tables taken from a bump pool.
#[derive(Debug)]
pub struct Tables<'a> {
    pub mem: &'a Mem,
    pub levels: u8,
    pub cr3: u64,
    next: u64,
    end: u64,
}

impl<'a> Tables<'a> {
    /// The root table is at `pool` and must be zeroed guest RAM (or already
    /// hold the tables to resume); further tables are allocated upwards
    /// from `pool + 4 KiB`, each zeroed when it is taken.
    pub fn new(mem: &'a Mem, levels: u8, pool: u64) -> Self {
        Self::resume(mem, levels, pool, pool + PAGE)
    }

    /// Tables at `cr3` that already exist, new ones allocated from `next`.
    pub fn resume(mem: &'a Mem, levels: u8, cr3: u64, next: u64) -> Self {
        Tables {
            mem,
            levels,
            cr3,
            next,
            end: u64::MAX,
        }
    }

    /// The pool ends at `end`: allocating a table there panics.
    pub fn with_pool_end(self, end: u64) -> Self {
        Tables { end, ..self }
    }

    /// The next free pool address.
    pub fn pool_next(&self) -> u64 {
        self.next
    }

    /// Take a zeroed table page from the pool; its GPA.
    pub fn alloc_table(&mut self) -> u64 {
        let t = self.next;
        assert!(t + PAGE <= self.end, "page-table pool exhausted at {t:#x}");
        mem::write(self.mem, t, &[0u8; PAGE as usize]).expect("table page in RAM");
        self.next += PAGE;
        t
    }

    /// GPA of the entry for `va` at `level`, creating the tables above it
    /// with directory entries `dir`; directory entries that exist are left
    /// as they are. A large leaf on the way is replaced by a new table (a
    /// split).
    pub fn entry_gpa_alloc(&mut self, va: u64, level: u8, dir: u64) -> u64 {
        self.descend(va, level, dir, false)
    }

    /// Walk to the entry for `va` at `level`, allocating missing tables;
    /// with `rewrite`, every directory entry on the way gets `dir`.
    fn descend(&mut self, va: u64, level: u8, dir: u64, rewrite: bool) -> u64 {
        let mut table = self.cr3;
        let mut l = self.levels;
        loop {
            let gpa = table + 8 * index(va, l);
            if l == level {
                return gpa;
            }
            let e = mem::load_u64(self.mem, gpa).expect("table entry in RAM");
            let is_table = e & PTE_P != 0 && (e & PTE_PS == 0 || l > 3);
            let next = if is_table {
                e & ADDR_MASK
            } else {
                self.alloc_table()
            };
            if rewrite || !is_table {
                mem::store_u64(self.mem, gpa, next | dir).expect("table entry in RAM");
            }
            table = next;
            l -= 1;
        }
    }

    /// Map `va` to `pa` with a leaf at `leaf_level` (1: 4 KiB, 2: 2 MiB,
    /// 3: 1 GiB) carrying `flags`; directory entries on the way get `dir`.
    /// Returns the GPA of the leaf entry.
    pub fn map(&mut self, va: u64, pa: u64, leaf_level: u8, flags: u64, dir: u64) -> u64 {
        let gpa = self.descend(va, leaf_level, dir, true);
        let ps = if leaf_level > 1 { PTE_PS } else { 0 };
        mem::store_u64(self.mem, gpa, pa | flags | ps).expect("leaf entry in RAM");
        gpa
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

    /// The entry for `va` at `level`, 0 when no table leads there.
    pub fn try_get(&self, va: u64, level: u8) -> u64 {
        self.try_entry_gpa(va, level)
            .and_then(|gpa| mem::load_u64(self.mem, gpa).ok())
            .unwrap_or(0)
    }

    /// Write the entry for `va` at `level` (as the CPU does with set_pte).
    pub fn set(&self, va: u64, level: u8, value: u64) {
        mem::store_u64(self.mem, self.entry_gpa(va, level), value).expect("entry in RAM");
    }

    /// Write the entry for `va` at `level`, creating the tables above it
    /// with directory entries [`DIR`]; its GPA.
    pub fn set_alloc(&mut self, va: u64, level: u8, value: u64) -> u64 {
        let gpa = self.entry_gpa_alloc(va, level, DIR);
        mem::store_u64(self.mem, gpa, value).expect("entry in RAM");
        gpa
    }
}

/// Write `dte` as device `devid`'s entry of the device table at `devtab`
/// (§1: 32-byte entries indexed by DeviceID).
pub fn write_dte(mem: &Mem, devtab: u64, devid: u16, dte: &Dte) {
    let at = devtab + Dte::SIZE * u64::from(devid);
    for (i, q) in dte.0.iter().enumerate() {
        mem::store_u64(mem, at + 8 * i as u64, *q).expect("DTE in RAM");
    }
}

/// Point entry `index` of the GCR3 table (or GCR3 directory) at `table` to
/// `target` with V=1 (§2): the CR3 of a PASID in a leaf table, the
/// next-level table in a directory.
pub fn write_gcr3_entry(mem: &Mem, table: u64, index: u64, target: u64) {
    mem::store_u64(mem, table + 8 * index, target | GCR3_VALID).expect("GCR3 entry in RAM");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dte::gcr3_lookup;

    #[test]
    fn split_alloc_and_zeroed_tables() {
        let m = mem::anon(0x20_0000);
        // A dirty pool page: taking it as a table zeroes it.
        mem::write(&m, 0x1_1000, &[0xff; 0x1000]).unwrap();
        let mut t = Tables::new(&m, 4, 0x1_0000);
        let big = t.map(0x4000_0000, 0x20_0000, 2, USER_RW, DIR);
        assert_eq!(t.pool_next(), 0x1_3000, "PDPT and PD");
        assert_eq!(t.get(0x4000_0000, 2), 0x20_0000 | USER_RW | PTE_PS);
        assert_eq!(t.try_get(0x4000_1000, 1), 0, "no table under a large leaf");
        // A 4 KiB entry under the large leaf splits it with a new table.
        let leaf = t.set_alloc(0x4000_1000, 1, 0x5000 | USER_RW);
        assert_eq!(t.entry_gpa(0x4000_1000, 2), big);
        assert_eq!(mem::load_u64(&m, big).unwrap(), 0x1_3000 | DIR);
        assert_eq!(leaf, 0x1_3000 + 8);
        assert_eq!(t.try_get(0x4000_1000, 1), 0x5000 | USER_RW);
        assert_eq!(t.try_get(0x4000_2000, 1), 0, "the new table is zeroed");
        assert_eq!(t.try_get(0x8000_0000, 1), 0, "no PD for this VA");
        // map() rewrites the directory entries on its way, entry_gpa_alloc()
        // leaves them.
        let pml4e = t.entry_gpa(0x4000_0000, 4);
        mem::store_u64(&m, pml4e, (0x1_1000 | DIR) & !PTE_US).unwrap();
        t.entry_gpa_alloc(0x4000_1000, 1, DIR);
        assert_eq!(
            mem::load_u64(&m, pml4e).unwrap(),
            (0x1_1000 | DIR) & !PTE_US
        );
        t.map(0x4000_1000, 0x5000, 1, USER_RW, DIR);
        assert_eq!(mem::load_u64(&m, pml4e).unwrap(), 0x1_1000 | DIR);
    }

    #[test]
    #[should_panic(expected = "page-table pool exhausted")]
    fn pool_end_is_enforced() {
        let m = mem::anon(0x10_0000);
        // The root and one more table fit; a 4 KiB leaf needs three.
        let mut t = Tables::new(&m, 4, 0x1_0000).with_pool_end(0x1_2000);
        t.set_alloc(0x4000_0000, 1, 1);
    }

    #[test]
    fn dte_and_gcr3_entries() {
        let m = mem::anon(0x10_0000);
        let d = Dte::encode_v2(3, 0x2000, 1, true, false);
        write_dte(&m, 0x1000, 5, &d);
        assert_eq!(Dte::read(&m, 0x1000, 5).unwrap().0, d.0);
        // A 2-level GCR3 table: PASID[17:9] in the directory, [8:0] in the leaf.
        let pasid = 0x203;
        write_gcr3_entry(&m, 0x2000, pasid >> 9, 0x3000);
        write_gcr3_entry(&m, 0x3000, pasid & 0x1ff, 0x8000);
        assert_eq!(gcr3_lookup(&m, 0x2000, 1, pasid as u32), Ok(0x8000));
    }
}
