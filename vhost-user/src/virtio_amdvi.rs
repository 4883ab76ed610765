//! Wire format of the amdvi guest protocol, version 1 (`docs/protocol.md`).
//! Every struct here is little-endian, `#[repr(C)]` without padding, and
//! `ByteValued`, so it can be copied to and from guest memory as bytes.

use vm_memory::{ByteValued, Le16, Le32, Le64};

/// Config space: magic (`"AMDV"`) and version.
pub const CONFIG_MAGIC: u32 = 0x5644_4d41;
pub const CONFIG_VERSION: u32 = 1;
pub const CONFIG_SIZE: usize = 8;

/// Queue indices.
pub const REQUEST_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;
pub const NUM_QUEUES: usize = 2;
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Request types (§2.2).
pub mod req {
    pub const INFO: u32 = 1;
    pub const SET_DEVTAB: u32 = 2;
    pub const COMMANDS: u32 = 3;
    pub const ENDPOINT: u32 = 4;
    pub const STREAM_START: u32 = 5;
    pub const STREAM_STOP: u32 = 6;
    pub const ORACLE_READ: u32 = 7;
    pub const ORACLE_AUDIT: u32 = 8;
    pub const ORACLE_EPOCH: u32 = 9;
    pub const STATS: u32 = 10;
}

iommu_dev::named_enum! {
    /// Status codes (§2.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u32)]
    pub enum Status {
        Ok = 0 => "ok",
        BadRequest = 1 => "bad_request",
        Unsupported = 2 => "unsupported",
        NotReady = 3 => "not_ready",
        OutOfRange = 4 => "out_of_range",
        TranslationFault = 5 => "translation_fault",
        IllegalCommand = 6 => "illegal_command",
        Timeout = 7 => "timeout",
        NoResource = 8 => "no_resource",
        DeviceError = 9 => "device_error",
    }
}

impl Status {
    pub fn from_u32(v: u32) -> Option<Status> {
        Status::ALL.into_iter().find(|s| *s as u32 == v)
    }
}

/// ENDPOINT operations and flags.
pub mod ep {
    pub const OP_TRANSLATE: u8 = 0;
    pub const OP_READ: u8 = 1;
    pub const OP_WRITE: u8 = 2;
    pub const F_PRIV: u8 = 1 << 0;
    pub const F_EXEC: u8 = 1 << 1;
    pub const F_NO_WRITE: u8 = 1 << 2;
    pub const F_NO_PRI: u8 = 1 << 3;
    pub const F_MASK: u8 = 0x0f;
    pub const MAX_LEN: u32 = 65536;
}

pub const MAX_COMMANDS: u32 = 512;
/// One command of a COMMANDS request, in the IOMMU's command-buffer format.
pub type Command = [u8; 16];
pub const MAX_ENDPOINTS: usize = 16;
pub const FAULT_RULES_LEN: usize = 256;
pub const ORACLE_MAX_RECORDS: u32 = 64;
pub const ORACLE_READ_F_CLEAR: u32 = 1;
pub const STREAM_STOP_F_REPORT: u32 = 1;
pub const STREAM_MODE_RANGE: u8 = 0;
pub const STREAM_MODE_FOLLOW: u8 = 1;
pub const INFO_F_ORACLE: u32 = 1 << 0;
pub const INFO_F_FIVE_LEVEL: u32 = 1 << 1;
pub const EVREC_EVENT: u16 = 1;
pub const EVREC_PPR: u16 = 2;

/// Names of the STATS counters, in protocol order.
pub const STAT_REQUESTS: usize = 0;
pub const STAT_BAD_CHAINS: usize = 1;

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct ReqHdr {
    pub type_: Le32,
    pub reserved: Le32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct RespHdr {
    pub status: Le32,
    pub reserved: Le32,
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Info {
    pub efr: Le64,
    pub num_endpoints: Le32,
    pub flags: Le32,
    pub iotlb_entries: Le32,
    pub pwc_entries: Le32,
    pub dte_cache_entries: Le32,
    pub atc_entries: Le32,
    pub max_streams: Le32,
    pub pri_timeout_ms: Le32,
    pub endpoint_devid: [Le16; MAX_ENDPOINTS],
    pub fault_rules: [u8; FAULT_RULES_LEN],
}

impl Default for Info {
    fn default() -> Self {
        Info {
            efr: 0.into(),
            num_endpoints: 0.into(),
            flags: 0.into(),
            iotlb_entries: 0.into(),
            pwc_entries: 0.into(),
            dte_cache_entries: 0.into(),
            atc_entries: 0.into(),
            max_streams: 0.into(),
            pri_timeout_ms: 0.into(),
            endpoint_devid: [Le16::from(0xffff); MAX_ENDPOINTS],
            fault_rules: [0; FAULT_RULES_LEN],
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct SetDevtab {
    pub dev_table_base: Le64,
    pub control: Le64,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct CommandsHdr {
    pub count: Le32,
    pub reserved: Le32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct CommandsResp {
    pub executed: Le32,
    pub comp_wait_int: Le32,
    pub illegal_gpa: Le64,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Endpoint {
    pub devid: Le16,
    pub op: u8,
    pub flags: u8,
    pub pasid: Le32,
    pub va: Le64,
    pub len: Le32,
    pub reserved: Le32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct EndpointResp {
    pub ats: Le64,
    pub page_requests: Le32,
    pub reserved: Le32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct StreamStart {
    pub devid: Le16,
    pub flags: u8,
    pub mode: u8,
    pub pasid: Le32,
    pub va: Le64,
    pub len: Le64,
    pub stride: Le32,
    pub read_weight: u8,
    pub write_weight: u8,
    pub translate_weight: u8,
    pub reserved2: u8,
    pub rate: Le32,
    pub duration_ms: Le32,
    pub write_value: Le64,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct StreamStartResp {
    pub stream_id: Le32,
    pub reserved: Le32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct StreamStop {
    pub stream_id: Le32,
    pub flags: Le32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct StreamCounts {
    pub reads: Le64,
    pub writes: Le64,
    pub translations: Le64,
    pub faults: Le64,
    pub page_requests: Le64,
    pub atc_hits: Le64,
    pub atc_misses: Le64,
    pub errors: Le64,
    pub elapsed_us: Le64,
    pub running: Le32,
    pub reserved: Le32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct OracleRead {
    pub max_records: Le32,
    pub flags: Le32,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct OracleAudit {
    pub pasid: Le32,
    pub max_records: Le32,
    pub va: Le64,
    pub len: Le64,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct OracleResp {
    pub count: [Le64; 8],
    pub nrecords: Le32,
    pub reserved: Le32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Finding {
    pub rule: Le32,
    pub devid: Le16,
    pub source: Le16,
    pub pasid: Le32,
    pub write: Le32,
    pub va: Le64,
    pub cached_pa: Le64,
    pub current_pte: Le64,
    pub seq: Le64,
    pub epoch: Le64,
    pub reserved: Le64,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct OracleEpoch {
    pub gpa: Le64,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct StatsHdr {
    pub count: Le32,
    pub reserved: Le32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EventRec {
    pub kind: Le16,
    pub reserved: Le16,
    pub dropped: Le32,
    pub entry: [u8; 16],
}

// SAFETY: every struct above is #[repr(C)], made only of integers and byte
// arrays, with no padding (sizes checked below), so any byte pattern is valid.
unsafe impl ByteValued for ReqHdr {}
// SAFETY: as above.
unsafe impl ByteValued for RespHdr {}
// SAFETY: as above.
unsafe impl ByteValued for Info {}
// SAFETY: as above.
unsafe impl ByteValued for SetDevtab {}
// SAFETY: as above.
unsafe impl ByteValued for CommandsHdr {}
// SAFETY: as above.
unsafe impl ByteValued for CommandsResp {}
// SAFETY: as above.
unsafe impl ByteValued for Endpoint {}
// SAFETY: as above.
unsafe impl ByteValued for EndpointResp {}
// SAFETY: as above.
unsafe impl ByteValued for StreamStart {}
// SAFETY: as above.
unsafe impl ByteValued for StreamStartResp {}
// SAFETY: as above.
unsafe impl ByteValued for StreamStop {}
// SAFETY: as above.
unsafe impl ByteValued for StreamCounts {}
// SAFETY: as above.
unsafe impl ByteValued for OracleRead {}
// SAFETY: as above.
unsafe impl ByteValued for OracleAudit {}
// SAFETY: as above.
unsafe impl ByteValued for OracleResp {}
// SAFETY: as above.
unsafe impl ByteValued for Finding {}
// SAFETY: as above.
unsafe impl ByteValued for OracleEpoch {}
// SAFETY: as above.
unsafe impl ByteValued for StatsHdr {}
// SAFETY: as above.
unsafe impl ByteValued for EventRec {}

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<ReqHdr>() == 8);
    assert!(size_of::<RespHdr>() == 8);
    assert!(size_of::<Info>() == 328);
    assert!(size_of::<SetDevtab>() == 16);
    assert!(size_of::<CommandsHdr>() == 8);
    assert!(size_of::<CommandsResp>() == 16);
    assert!(size_of::<Endpoint>() == 24);
    assert!(size_of::<EndpointResp>() == 16);
    assert!(size_of::<StreamStart>() == 48);
    assert!(size_of::<StreamStartResp>() == 8);
    assert!(size_of::<StreamStop>() == 8);
    assert!(size_of::<StreamCounts>() == 80);
    assert!(size_of::<OracleRead>() == 8);
    assert!(size_of::<OracleAudit>() == 24);
    assert!(size_of::<OracleResp>() == 72);
    assert!(size_of::<Finding>() == 64);
    assert!(size_of::<OracleEpoch>() == 8);
    assert!(size_of::<StatsHdr>() == 8);
    assert!(size_of::<EventRec>() == 24);
};

/// Copy a wire struct out of the start of `b` (which must be long enough).
pub fn read_obj<T: ByteValued + Default>(b: &[u8]) -> Option<T> {
    let mut v = T::default();
    let n = std::mem::size_of::<T>();
    v.as_mut_slice().copy_from_slice(b.get(..n)?);
    Some(v)
}
