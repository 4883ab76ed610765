//! The parts of `guest-tests/include/amdvi_uapi.h` that `amdvi-script`
//! uses, with the same layouts. `tests/uapi_layout.rs` compiles a C probe
//! of the header and compares every field offset and size, every constant
//! and every ioctl number here with what the C compiler makes of it.

#![allow(dead_code)]

pub const DEV_PATH: &str = "/dev/amdvi";
pub const MAX_EP: usize = 16;

pub const OP_TRANSLATE: u8 = 0;
pub const OP_READ: u8 = 1;
pub const OP_WRITE: u8 = 2;
pub const ACC_NO_PRI: u8 = 1 << 3;

pub const ORACLE_CLEAR: u32 = 1;
pub const ORACLE_RECORDS: u32 = 64;

pub const PT_PAGE_ALLOC: u32 = 0;
pub const PT_PAGE_READ: u32 = 1;
pub const PT_PAGE_WRITE: u32 = 2;
pub const PT_PTE_GET: u32 = 0;
pub const PT_PTE_SET: u32 = 1;
pub const INV_IOMMU: u32 = 1 << 0;
pub const INV_IOTLB: u32 = 1 << 1;
pub const INV_WAIT: u32 = 1 << 2;

/// Device status (docs/protocol.md §2.1).
pub const S_OK: u32 = 0;
pub const S_TRANSLATION_FAULT: u32 = 5;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Info {
    pub efr: u64,
    pub num_endpoints: u32,
    pub dev_flags: u32,
    pub iotlb_entries: u32,
    pub pwc_entries: u32,
    pub dte_cache_entries: u32,
    pub atc_entries: u32,
    pub max_streams: u32,
    pub pri_timeout_ms: u32,
    pub endpoint_devid: [u16; MAX_EP],
    pub max_pasid: u32,
    pub guest_levels: u32,
    pub features: u32,
    pub notifier_mode: u32,
    pub epoch_gpa: u64,
    pub fault_rules: [u8; 256],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Access {
    pub endpoint: u32,
    pub pasid: u32,
    pub va: u64,
    pub buf: u64,
    pub len: u32,
    pub op: u8,
    pub flags: u8,
    pub reserved: u16,
    pub status: u32,
    pub page_requests: u32,
    pub ats: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Finding {
    pub rule: u32,
    pub devid: u16,
    pub source: u16,
    pub pasid: u32,
    pub write: u32,
    pub va: u64,
    pub cached_pa: u64,
    pub current_pte: u64,
    pub seq: u64,
    pub epoch: u64,
    pub reserved: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Oracle {
    pub pasid: u32,
    pub flags: u32,
    pub va: u64,
    pub len: u64,
    pub records: u64,
    pub max_records: u32,
    pub nrecords: u32,
    pub status: u32,
    pub reserved: u32,
    pub count: [u64; 8],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PtCreate {
    pub pasid: u32,
    pub endpoint_mask: u32,
    pub levels: u32,
    pub reserved: u32,
    pub root_pa: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PtPage {
    pub op: u32,
    pub index: u32,
    pub offset: u32,
    pub len: u32,
    pub buf: u64,
    pub pa: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PtPte {
    pub op: u32,
    pub reserved: u32,
    pub va: u64,
    pub value: u64,
    pub old: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PtInv {
    pub flags: u32,
    pub pasid: u32,
    pub endpoint_mask: u32,
    pub s: u32,
    pub addr: u64,
}

/// BIND_PID: another process's mm (by pidfd) to a new PASID.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BindPid {
    pub pidfd: i32,
    pub endpoint_mask: u32,
    pub flags: u32,
    pub pasid: u32,
}

/// STREAM_START flag: follow the PASID's address space.
pub const STREAM_FOLLOW: u8 = 1 << 7;

const TYPE: u64 = b'A' as u64;

/// `_IOC(dir, 'A', nr, size)` of asm-generic/ioctl.h (dir: 1 write, 2 read).
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (TYPE << 8) | nr
}

const W: u64 = 1;
const R: u64 = 2;

pub const IOC_INFO: u64 = ioc(R, 0x10, std::mem::size_of::<Info>());
pub const IOC_ACCESS: u64 = ioc(R | W, 0x13, std::mem::size_of::<Access>());
pub const IOC_ORACLE_READ: u64 = ioc(R | W, 0x17, std::mem::size_of::<Oracle>());
pub const IOC_ORACLE_AUDIT: u64 = ioc(R | W, 0x18, std::mem::size_of::<Oracle>());
pub const IOC_PT_CREATE: u64 = ioc(R | W, 0x1b, std::mem::size_of::<PtCreate>());
pub const IOC_PT_PAGE: u64 = ioc(R | W, 0x1c, std::mem::size_of::<PtPage>());
pub const IOC_PT_PTE: u64 = ioc(R | W, 0x1d, std::mem::size_of::<PtPte>());
pub const IOC_PT_INV: u64 = ioc(W, 0x1e, std::mem::size_of::<PtInv>());
pub const IOC_BIND_PID: u64 = ioc(R | W, 0x22, std::mem::size_of::<BindPid>());
