//! The AMD IOMMU data structures in guest memory, written as a guest
//! driver writes them, with the guest fixture of `iommu_dev::pgtable`: the
//! device table, a one-level GCR3 table, 4-level page tables from a pool
//! at `PT_POOL`, data pages from `DATA_POOL`.

use iommu_dev::pgtable::{self, Tables, DIR};
use iommu_dev::{DevTableBase, Dte};
use vhost_device_amdvi::virtio_amdvi::Status;
use vm_memory::{Bytes, GuestAddress};

use super::*;

pub use iommu_dev::control::{
    EVENT_LOG_EN as CTRL_EVENT_LOG_EN, GT_EN as CTRL_GT_EN, IOMMU_EN as CTRL_IOMMU_EN,
    PPR_EN as CTRL_PPR_EN, PPR_LOG_EN as CTRL_PPR_LOG_EN,
};
/// Every Control bit a Linux driver sets for SVA.
pub const CTRL_ALL: u64 =
    CTRL_IOMMU_EN | CTRL_EVENT_LOG_EN | CTRL_PPR_LOG_EN | CTRL_PPR_EN | CTRL_GT_EN;

/// A user read-write leaf: present, writable, user.
pub use iommu_dev::pgtable::USER_RW as PTE_URW;

impl Guest {
    /// Take a data page (not zeroed: the daemon and the test write it).
    pub fn alloc_page(&mut self) -> u64 {
        let p = self.data_next;
        self.data_next += 0x1000;
        p
    }

    /// Device table with DTEs for EP0 (domain 1) and EP1 (domain 2), both
    /// using one 1-level GCR3 table whose PASID 1 entry is a fresh 4-level
    /// page table; SET_DEVTAB with every control bit a Linux driver sets.
    pub fn setup_iommu(&mut self) {
        self.mem
            .write_slice(&[0u8; 4096], GuestAddress(DEVTAB))
            .unwrap();
        self.mem
            .write_slice(&[0u8; 4096], GuestAddress(GCR3))
            .unwrap();
        for (devid, dom) in [(EP0, 1u16), (EP1, 2)] {
            pgtable::write_dte(
                &self.mem,
                DEVTAB,
                devid,
                &Dte::encode_v2(dom, GCR3, 0, true, false),
            );
        }
        let mut t = Tables::resume(&self.mem, 4, 0, self.pt_next);
        self.cr3 = t.alloc_table();
        self.pt_next = t.pool_next();
        pgtable::write_gcr3_entry(&self.mem, GCR3, u64::from(PASID), self.cr3);
        assert_eq!(
            self.set_devtab(DevTableBase::encode(DEVTAB, 1), CTRL_ALL),
            Some(Status::Ok)
        );
    }

    /// The GPA of the level-1 entry for `va`, creating tables on the way.
    pub fn pte_gpa(&mut self, va: u64) -> u64 {
        let mut t = Tables::resume(&self.mem, 4, self.cr3, self.pt_next);
        let at = t.entry_gpa_alloc(va, 1, DIR);
        self.pt_next = t.pool_next();
        at
    }

    pub fn map(&mut self, va: u64, pa: u64, flags: u64) {
        let at = self.pte_gpa(va);
        self.mem.write_obj(pa | flags, GuestAddress(at)).unwrap();
    }

    pub fn unmap(&mut self, va: u64) {
        let at = self.pte_gpa(va);
        self.mem.write_obj(0u64, GuestAddress(at)).unwrap();
    }

    /// Map `pages` fresh pages at `va`; returns their PAs.
    pub fn map_range(&mut self, va: u64, pages: usize) -> Vec<u64> {
        (0..pages)
            .map(|i| {
                let pa = self.alloc_page();
                self.map(va + 0x1000 * i as u64, pa, PTE_URW);
                pa
            })
            .collect()
    }

    pub fn read_u64(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }
}
