//! A guest's view for model tests: device table, GCR3 table and CPU page
//! tables in a `GuestMemoryMmap`, written in the AMD formats as Linux would
//! with the guest fixture (`iommu_dev::pgtable`), and the helpers the
//! model's test files share (access flags, event-record fields).

#![allow(dead_code)]

use std::time::Duration;

use iommu_dev::event::LogRecord;
use iommu_dev::mem::{self, Mem};
use iommu_dev::pgtable::{self, Tables, DIR, USER_RW};
use iommu_dev::{control, AccessFlags, Command, DevTableBase, Dte, Iommu, IommuConfig, SRange};
use vm_memory::GuestMemoryAtomic;

pub const DEVID: u16 = 0x10;
pub const DOMAIN: u16 = 7;
pub const PASID: u32 = 0x203;
pub const DEVTAB: u64 = 0x1000;
pub const GCR3_ROOT: u64 = 0x2000;
pub const GCR3_LEAF: u64 = 0x3000;
pub const SEM: u64 = 0x8000;
pub const CMDS: u64 = 0x9000;
pub const POOL: u64 = 0x10_0000;
pub const DATA: u64 = 0x100_0000;
pub const VA: u64 = 0x7f00_0000_0000;
pub const MEM_SIZE: usize = 0x400_0000;
pub const CTL: u64 = control::IOMMU_EN
    | control::EVENT_LOG_EN
    | control::PPR_LOG_EN
    | control::PPR_EN
    | control::GT_EN;

/// A user access without PRI: translated, through the ATC.
pub const RW: AccessFlags = AccessFlags::NO_PRI;

/// [`RW`] as untranslated DMA (the IOMMU translates it, nothing is cached).
pub const UN: AccessFlags = AccessFlags {
    untranslated: true,
    ..RW
};

/// [`RW`] with PRI: a fault sends a page request and waits for its answer.
pub const PRI: AccessFlags = AccessFlags {
    no_pri: false,
    ..RW
};

/// The event code of a log record (bits 63:60).
pub fn code(rec: &[u8; 16]) -> u64 {
    u64::from_le_bytes(rec[..8].try_into().unwrap()) >> 60
}

/// The low quadword of a log record.
pub fn lo(rec: &[u8; 16]) -> u64 {
    u64::from_le_bytes(rec[..8].try_into().unwrap())
}

/// The address quadword of a log record.
pub fn addr(rec: &[u8; 16]) -> u64 {
    u64::from_le_bytes(rec[8..].try_into().unwrap())
}

pub struct Guest {
    pub mem: Mem,
    pub iommu: Iommu,
    pub levels: u8,
    next_pool: u64,
    cmd_seq: std::sync::atomic::AtomicU64,
}

impl Guest {
    pub fn new(levels: u8) -> Self {
        Self::with_config(
            levels,
            IommuConfig {
                pri_timeout: Duration::from_millis(500),
                ..Default::default()
            },
        )
    }

    pub fn with_config(levels: u8, cfg: IommuConfig) -> Self {
        let mem = mem::anon(MEM_SIZE);
        let iommu = Iommu::new(cfg, GuestMemoryAtomic::new(mem.clone()));
        let g = Guest {
            mem,
            iommu,
            levels,
            next_pool: POOL + 0x1000,
            cmd_seq: Default::default(),
        };
        g.write_dte(Dte::encode_v2(DOMAIN, GCR3_ROOT, 1, true, levels == 5));
        // 2-level GCR3: top index PASID[17:9], leaf index PASID[8:0].
        pgtable::write_gcr3_entry(&g.mem, GCR3_ROOT, u64::from(PASID >> 9), GCR3_LEAF);
        pgtable::write_gcr3_entry(&g.mem, GCR3_LEAF, u64::from(PASID & 0x1ff), POOL);
        g.iommu
            .set_device_table(DevTableBase::encode(DEVTAB, 1), CTL)
            .unwrap();
        g
    }

    pub fn write_dte(&self, d: Dte) {
        pgtable::write_dte(&self.mem, DEVTAB, DEVID, &d);
    }

    pub fn tables(&mut self) -> TablesGuard<'_> {
        let t = Tables::resume(&self.mem, self.levels, POOL, self.next_pool);
        TablesGuard {
            t: Some(t),
            next: &mut self.next_pool,
        }
    }

    /// Map `n` 4 KiB pages at VA to DATA.. and fill each with its index.
    pub fn map_pages(&mut self, n: u64) {
        for i in 0..n {
            self.tables()
                .map(VA + i * 0x1000, DATA + i * 0x1000, 1, USER_RW, DIR);
            mem::write(&self.mem, DATA + i * 0x1000, &[i as u8; 0x1000]).unwrap();
        }
    }

    pub fn pte(&mut self, va: u64) -> u64 {
        self.tables().get(va, 1)
    }

    pub fn set_pte(&mut self, va: u64, v: u64) {
        self.tables().set(va, 1, v)
    }

    /// Send commands from a buffer in guest memory, as the guest would.
    pub fn commands(&self, cmds: &[Command]) -> iommu_dev::BatchResult {
        let raw: Vec<(u64, [u8; 16])> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| (CMDS + 16 * i as u64, c.encode()))
            .collect();
        for (gpa, r) in &raw {
            mem::write(&self.mem, *gpa, r).unwrap();
        }
        self.iommu.execute(&raw)
    }

    /// INVALIDATE_IOMMU_PAGES + INVALIDATE_IOTLB_PAGES + COMPLETION_WAIT for a range,
    /// as Linux's AMD driver flushes a PASID range. Returns whether the wait stored.
    pub fn flush(&self, start: u64, end: u64) -> bool {
        let range = SRange::covering(start, end);
        let seq = self
            .cmd_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let r = self.commands(&[
            Command::InvalidateIommuPages {
                domain_id: DOMAIN,
                pasid: PASID,
                gn: true,
                pde: true,
                range,
            },
            Command::InvalidateIotlbPages {
                devid: DEVID,
                pasid: PASID,
                gn: true,
                maxpend: 32,
                queue_id: DEVID,
                range,
            },
            Command::CompletionWait {
                store: true,
                interrupt: false,
                flush: false,
                addr: SEM,
                data: seq,
            },
        ]);
        assert_eq!(r.illegal, None);
        mem::load_u64(&self.mem, SEM).unwrap() == seq
    }

    pub fn events(&self) -> Vec<LogRecord> {
        self.iommu.event_log().take(usize::MAX)
    }

    pub fn event_codes(&self) -> Vec<u64> {
        self.events()
            .iter()
            .map(|r| u64::from_le_bytes(r.entry[..8].try_into().unwrap()) >> 60)
            .collect()
    }
}

pub struct TablesGuard<'a> {
    t: Option<Tables<'a>>,
    next: &'a mut u64,
}

impl<'a> std::ops::Deref for TablesGuard<'a> {
    type Target = Tables<'a>;
    fn deref(&self) -> &Tables<'a> {
        self.t.as_ref().unwrap()
    }
}

impl<'a> std::ops::DerefMut for TablesGuard<'a> {
    fn deref_mut(&mut self) -> &mut Tables<'a> {
        self.t.as_mut().unwrap()
    }
}

impl Drop for TablesGuard<'_> {
    fn drop(&mut self) {
        *self.next = self.t.as_ref().unwrap().pool_next();
    }
}
