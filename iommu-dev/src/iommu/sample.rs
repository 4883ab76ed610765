//! What a PASID maps now, for a device that follows an address space
//! (the daemon's follow-mode streams): the present user leaves of the page
//! table that GCR3[pasid] points to, read without side effects (no A/D
//! updates, no cache fills, no oracle records).

use super::Iommu;
use crate::dte::{gcr3_lookup, Dte};
use crate::mem::{self, Mem};
use crate::walker::{ADDR_MASK, PTE_P, PTE_PS, PTE_RW, PTE_US};

/// One present user leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedLeaf {
    /// First address the leaf maps (aligned to its size).
    pub va: u64,
    /// 12, 21 or 30.
    pub size_log2: u8,
    /// Writable at every level.
    pub writable: bool,
}

/// The present leaves of the user half of the table rooted at `cr3`
/// (`levels` 4 or 5) whose every level has P and U/S set, in address order,
/// at most `max`. A table that cannot be read is skipped.
pub fn user_leaves(mem: &Mem, cr3: u64, levels: u8, max: usize) -> Vec<MappedLeaf> {
    let mut out = Vec::new();
    // The user half: the lower half of the top-level table.
    descend(mem, cr3 & ADDR_MASK, levels, levels, 0, true, max, &mut out);
    out
}

#[allow(clippy::too_many_arguments)]
fn descend(
    mem: &Mem,
    table: u64,
    levels: u8,
    level: u8,
    base: u64,
    writable: bool,
    max: usize,
    out: &mut Vec<MappedLeaf>,
) {
    let shift = 12 + 9 * (u32::from(level) - 1);
    let count = if level == levels { 256 } else { 512 };
    for i in 0..count {
        if out.len() >= max {
            return;
        }
        let Ok(e) = mem::load_u64(mem, table + i * 8) else {
            return;
        };
        if e & (PTE_P | PTE_US) != (PTE_P | PTE_US) {
            continue;
        }
        let va = base | (i << shift);
        let w = writable && e & PTE_RW != 0;
        let leaf = level == 1 || (e & PTE_PS != 0 && (level == 2 || level == 3));
        if leaf {
            out.push(MappedLeaf {
                va,
                size_log2: shift as u8,
                writable: w,
            });
        } else if e & PTE_PS == 0 {
            descend(mem, e & ADDR_MASK, levels, level - 1, va, w, max, out);
        }
    }
}

impl Iommu {
    /// The present user leaves of (devid, PASID) now, through the device
    /// table and the GCR3 table in memory (not the DTE cache): empty when
    /// the PASID has no table.
    pub fn mapped_leaves(&self, devid: u16, pasid: u32, max: usize) -> Vec<MappedLeaf> {
        let mem = self.memory();
        let Some(dt) = self.regs.read().unwrap().devtab else {
            return Vec::new();
        };
        let Ok(Ok(dte)) =
            Dte::read(&mem, dt.base, devid).map(|d| d.decode(self.cfg.five_level, true))
        else {
            return Vec::new();
        };
        let Ok(cr3) = gcr3_lookup(&mem, dte.gcr3_root, dte.glx, pasid) else {
            return Vec::new();
        };
        user_leaves(&mem, cr3, if dte.five_level { 5 } else { 4 }, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgtable::{Tables, DIR};

    #[test]
    fn finds_user_leaves_only() {
        let mem = mem::anon(16 << 20);
        let mut t = Tables::new(&mem, 4, 0x10_0000);
        t.map_4k(0x40_0000, 0x80_0000);
        t.map_4k(0x40_3000, 0x80_1000);
        t.map(0x4000_0000, 0x20_0000, 2, PTE_P | PTE_US | PTE_PS, DIR);
        // read-only leaf
        t.map(0x7000_0000, 0x81_0000, 1, PTE_P | PTE_US, DIR);
        // supervisor leaf: not a user mapping
        t.map(0x5000_0000, 0x82_0000, 1, PTE_P | PTE_RW, DIR);
        // kernel half
        t.map(
            0xffff_8000_0000_0000,
            0x83_0000,
            1,
            PTE_P | PTE_RW | PTE_US,
            DIR,
        );
        let l = user_leaves(&mem, t.cr3, 4, 100);
        let got: Vec<_> = l.iter().map(|l| (l.va, l.size_log2, l.writable)).collect();
        assert_eq!(
            got,
            vec![
                (0x40_0000, 12, true),
                (0x40_3000, 12, true),
                (0x4000_0000, 21, false),
                (0x7000_0000, 12, false),
            ]
        );
        assert_eq!(user_leaves(&mem, t.cr3, 4, 2).len(), 2);
    }
}
