//! Event-log entries (§5), PPR-log entries (§6.1) and the bounded logs that
//! carry them. A full log drops and counts (EventOverflow / PprOverflow); it
//! never blocks the walker or an endpoint.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Event codes (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EventCode {
    IllegalDevTableEntry = 0x1,
    IoPageFault = 0x2,
    DevTabHardwareError = 0x3,
    PageTabHardwareError = 0x4,
    IllegalCommandError = 0x5,
    CommandHardwareError = 0x6,
    IotlbInvTimeout = 0x7,
    InvalidDeviceRequest = 0x8,
    InvalidPprRequest = 0x9,
}

/// Flag bits inside the 12-bit flags field (§5.2).
pub mod flag {
    pub const GN: u16 = 1 << 0;
    pub const NX: u16 = 1 << 1;
    pub const US: u16 = 1 << 2;
    pub const I: u16 = 1 << 3;
    pub const PR: u16 = 1 << 4;
    pub const RW: u16 = 1 << 5;
    pub const PE: u16 = 1 << 6;
    pub const RZ: u16 = 1 << 7;
    pub const TR: u16 = 1 << 8;
    /// Hardware-error type field, bits 10:9.
    pub const TYPE_SHIFT: u16 = 9;
}

/// Hardware-error type (bits 10:9 of the flags).
pub const HW_TARGET_ABORT: u16 = 0b10;
pub const HW_MASTER_ABORT: u16 = 0b01;

/// INVALID_DEVICE_REQUEST types (bits 11:9, with TR=1).
pub const IDR_TRANSLATION_NOT_ALLOWED: u16 = 0;
pub const IDR_TRANSLATION_DISABLED: u16 = 1;

/// A 128-bit event-log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub code: EventCode,
    pub devid: u16,
    /// PASID (GN=1) or DomainID (GN=0) for the events that carry one.
    pub pasid_or_domain: u32,
    pub flags: u16,
    pub addr: u64,
}

impl Event {
    pub fn io_page_fault(devid: u16, pasid_or_domain: u32, flags: u16, addr: u64) -> Self {
        Event {
            code: EventCode::IoPageFault,
            devid,
            pasid_or_domain,
            flags,
            addr,
        }
    }

    pub fn illegal_dte(devid: u16, pasid: u32, flags: u16, addr: u64) -> Self {
        Event {
            code: EventCode::IllegalDevTableEntry,
            devid,
            pasid_or_domain: pasid,
            flags,
            addr,
        }
    }

    pub fn dev_tab_hw_error(devid: u16, flags: u16, dte_gpa: u64) -> Self {
        Event {
            code: EventCode::DevTabHardwareError,
            devid,
            pasid_or_domain: 0,
            flags: flags | HW_TARGET_ABORT << flag::TYPE_SHIFT,
            addr: dte_gpa,
        }
    }

    pub fn page_tab_hw_error(devid: u16, pasid_or_domain: u32, flags: u16, gpa: u64) -> Self {
        Event {
            code: EventCode::PageTabHardwareError,
            devid,
            pasid_or_domain,
            flags: flags | HW_TARGET_ABORT << flag::TYPE_SHIFT,
            addr: gpa & !7,
        }
    }

    pub fn illegal_command(cmd_gpa: u64) -> Self {
        Event {
            code: EventCode::IllegalCommandError,
            devid: 0,
            pasid_or_domain: 0,
            flags: 0,
            addr: cmd_gpa,
        }
    }

    pub fn command_hw_error(gpa: u64) -> Self {
        Event {
            code: EventCode::CommandHardwareError,
            devid: 0,
            pasid_or_domain: 0,
            flags: HW_TARGET_ABORT << flag::TYPE_SHIFT,
            addr: gpa,
        }
    }

    pub fn iotlb_inv_timeout(devid: u16, cmd_gpa: u64) -> Self {
        Event {
            code: EventCode::IotlbInvTimeout,
            devid,
            pasid_or_domain: 0,
            flags: 0,
            addr: cmd_gpa,
        }
    }

    pub fn invalid_device_request(
        devid: u16,
        pasid: u32,
        flags: u16,
        kind: u16,
        addr: u64,
    ) -> Self {
        Event {
            code: EventCode::InvalidDeviceRequest,
            devid,
            pasid_or_domain: pasid,
            flags: flags | (kind & 7) << 9,
            addr,
        }
    }

    /// Encode (§5.1): DW0 = DevID | PASID[19:16] << 16; DW1 = DomainID or
    /// PASID[15:0] | flags << 16 | code << 28; DW3:DW2 = address.
    pub fn encode(&self) -> [u8; 16] {
        let lo = u64::from(self.devid)
            | u64::from((self.pasid_or_domain >> 16) & 0xf) << 16
            | u64::from(self.pasid_or_domain & 0xffff) << 32
            | u64::from(self.flags & 0xfff) << 48
            | (self.code as u64) << 60;
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&lo.to_le_bytes());
        out[8..].copy_from_slice(&self.addr.to_le_bytes());
        out
    }
}

/// PPR flag bits inside the 12-bit flags field (§6.1).
pub mod ppr_flag {
    pub const EXEC: u16 = 1 << 1;
    pub const READ: u16 = 1 << 2;
    pub const WRITE: u16 = 1 << 5;
    pub const US: u16 = 1 << 6;
    pub const RZ: u16 = 1 << 7;
    pub const GN: u16 = 1 << 8;
}

/// PPR tag bit 9: last request of the page request group.
pub const PPR_TAG_LAST: u16 = 1 << 9;
pub const PPR_TYPE_PAGE_SERVICE_REQUEST: u8 = 1;

/// A PAGE_SERVICE_REQUEST PPR-log entry, or (with `code` 9) the same layout
/// logged as INVALID_PPR_REQUEST in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PprEntry {
    pub devid: u16,
    pub pasid: u32,
    /// PRG index (8:0) and the last flag (bit 9).
    pub tag: u16,
    pub flags: u16,
    pub addr: u64,
}

impl PprEntry {
    fn encode_with(&self, kind: u8) -> [u8; 16] {
        let lo = u64::from(self.devid)
            | u64::from(self.pasid & 0xffff) << 16
            | u64::from(self.tag & 0x3ff) << 32
            | u64::from((self.pasid >> 16) & 0xf) << 42
            | u64::from(self.flags & 0xfff) << 48
            | u64::from(kind) << 60;
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&lo.to_le_bytes());
        out[8..].copy_from_slice(&(self.addr & !0xfff).to_le_bytes());
        out
    }

    pub fn encode(&self) -> [u8; 16] {
        self.encode_with(PPR_TYPE_PAGE_SERVICE_REQUEST)
    }

    /// INVALID_PPR_REQUEST for the event log: PPR-like layout, code 9 (§5.3, §9).
    pub fn encode_invalid(&self) -> [u8; 16] {
        self.encode_with(EventCode::InvalidPprRequest as u8)
    }

    pub fn decode(raw: &[u8; 16]) -> Self {
        let lo = u64::from_le_bytes(raw[..8].try_into().unwrap());
        PprEntry {
            devid: lo as u16,
            pasid: ((lo >> 16) & 0xffff) as u32 | (((lo >> 42) & 0xf) as u32) << 16,
            tag: ((lo >> 32) & 0x3ff) as u16,
            flags: ((lo >> 48) & 0xfff) as u16,
            addr: u64::from_le_bytes(raw[8..].try_into().unwrap()),
        }
    }
}

/// One entry as delivered, with the number of entries dropped just before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord {
    pub entry: [u8; 16],
    pub dropped_before: u32,
}

type Notify = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct LogInner {
    queue: VecDeque<LogRecord>,
    dropped_pending: u32,
}

/// A bounded log (event log or PPR log).
pub struct Log {
    inner: Mutex<LogInner>,
    capacity: usize,
    logged: AtomicU64,
    dropped: AtomicU64,
    notify: Mutex<Option<Notify>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("capacity", &self.capacity)
            .field("logged", &self.logged)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl Log {
    pub fn new(capacity: usize) -> Self {
        Log {
            inner: Mutex::new(LogInner::default()),
            capacity: capacity.max(1),
            logged: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            notify: Mutex::new(None),
        }
    }

    /// Called (without locks held) after each accepted entry.
    pub fn set_notify(&self, f: Option<Notify>) {
        *self.notify.lock().unwrap() = f;
    }

    /// Append; when full, drop and count. Returns whether it was kept.
    pub fn push(&self, entry: [u8; 16]) -> bool {
        {
            let mut inner = self.inner.lock().unwrap();
            if inner.queue.len() >= self.capacity {
                inner.dropped_pending = inner.dropped_pending.saturating_add(1);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let dropped_before = std::mem::take(&mut inner.dropped_pending);
            inner.queue.push_back(LogRecord {
                entry,
                dropped_before,
            });
        }
        self.logged.fetch_add(1, Ordering::Relaxed);
        let notify = self.notify.lock().unwrap().clone();
        if let Some(f) = notify {
            f();
        }
        true
    }

    /// Take up to `max` entries, oldest first.
    pub fn take(&self, max: usize) -> Vec<LogRecord> {
        let mut inner = self.inner.lock().unwrap();
        let n = max.min(inner.queue.len());
        inner.queue.drain(..n).collect()
    }

    /// Put entries back at the front (a consumer that could not deliver them).
    pub fn unget(&self, recs: Vec<LogRecord>) {
        let mut inner = self.inner.lock().unwrap();
        for r in recs.into_iter().rev() {
            inner.queue.push_front(r);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn logged(&self) -> u64 {
        self.logged.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.queue.clear();
        inner.dropped_pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qw(e: &[u8; 16]) -> (u64, u64) {
        (
            u64::from_le_bytes(e[..8].try_into().unwrap()),
            u64::from_le_bytes(e[8..].try_into().unwrap()),
        )
    }

    /// Bit-by-bit against §5.1/§5.2, read back the way Linux decodes events.
    #[test]
    fn io_page_fault_layout() {
        let f = flag::GN | flag::US | flag::PR | flag::RW | flag::PE;
        let e = Event::io_page_fault(0x0010, 0xa_bcde, f, 0x7f00_1234_5678).encode();
        let dw = |i: usize| u32::from_le_bytes(e[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(dw(0) & 0xffff, 0x0010, "devid");
        assert_eq!((dw(0) & 0xf0000) | (dw(1) & 0xffff), 0xa_bcde, "pasid");
        assert_eq!((dw(1) >> 16) & 0xfff, 0x075, "flags");
        assert_eq!(dw(1) >> 28, 2, "type");
        assert_eq!(u64::from(dw(3)) << 32 | u64::from(dw(2)), 0x7f00_1234_5678);
        // Abs bits: GN 48, US 50, PR 52, RW 53, PE 54; NX 49, I 51, RZ 55, TR 56 clear.
        let (lo, _) = qw(&e);
        for (bit, set) in [
            (48, true),
            (49, false),
            (50, true),
            (51, false),
            (52, true),
            (53, true),
            (54, true),
            (55, false),
            (56, false),
        ] {
            assert_eq!(lo >> bit & 1 == 1, set, "abs bit {bit}");
        }
    }

    #[test]
    fn every_event_code() {
        let cases = [
            (Event::illegal_dte(1, 2, flag::RZ | flag::TR, 0x1000), 1u64),
            (Event::io_page_fault(1, 2, 0, 0x1000), 2),
            (Event::dev_tab_hw_error(1, flag::TR, 0x2000), 3),
            (Event::page_tab_hw_error(1, 2, flag::GN, 0x3008), 4),
            (Event::illegal_command(0x4000), 5),
            (Event::command_hw_error(0x5000), 6),
            (Event::iotlb_inv_timeout(1, 0x6000), 7),
            (
                Event::invalid_device_request(1, 2, flag::TR, IDR_TRANSLATION_NOT_ALLOWED, 0x7000),
                8,
            ),
        ];
        for (e, code) in cases {
            let (lo, hi) = qw(&e.encode());
            assert_eq!(lo >> 60, code);
            assert_eq!(hi, e.addr);
        }
        let (lo, _) = qw(&Event::dev_tab_hw_error(1, 0, 0).encode());
        assert_eq!((lo >> 57) & 3, 0b10, "target abort type at 58:57");
        let (lo, _) = qw(&Event::illegal_dte(1, 0, flag::RZ | flag::TR, 0).encode());
        assert!(lo >> 55 & 1 == 1 && lo >> 56 & 1 == 1);
        let (lo, _) = qw(&Event::invalid_device_request(1, 0, flag::TR, 1, 0).encode());
        assert_eq!((lo >> 57) & 7, 1, "INVALID_DEVICE_REQUEST type 59:57");
    }

    #[test]
    fn ppr_layout_like_linux() {
        let p = PprEntry {
            devid: 0x10,
            pasid: 0x5_1234,
            tag: 0x1ab | PPR_TAG_LAST,
            flags: ppr_flag::READ | ppr_flag::WRITE | ppr_flag::US | ppr_flag::GN,
            addr: 0x7f00_0000_1234,
        };
        let e = p.encode();
        let (lo, hi) = qw(&e);
        assert_eq!(lo & 0xffff, 0x10);
        assert_eq!((lo >> 16) & 0xffff, 0x1234);
        assert_eq!((lo >> 32) & 0x3ff, 0x3ab);
        assert_eq!((lo >> 42) & 0xf, 5);
        assert_eq!((lo >> 48) & 0xfff, 0x164);
        assert_eq!(lo >> 60, 1);
        assert_eq!(hi, 0x7f00_0000_1000, "page address");
        assert_eq!(
            PprEntry::decode(&e),
            PprEntry {
                addr: 0x7f00_0000_1000,
                ..p
            }
        );
        assert_eq!(qw(&p.encode_invalid()).0 >> 60, 9);
    }

    #[test]
    fn log_overflow_counts_and_reports() {
        let log = Log::new(2);
        assert!(log.push([1; 16]));
        assert!(log.push([2; 16]));
        assert!(!log.push([3; 16]));
        assert!(!log.push([4; 16]));
        assert_eq!((log.logged(), log.dropped()), (2, 2));
        let got = log.take(10);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].dropped_before, 0);
        assert!(log.push([5; 16]));
        let got = log.take(10);
        assert_eq!(
            got,
            vec![LogRecord {
                entry: [5; 16],
                dropped_before: 2
            }]
        );
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        log.set_notify(Some(Arc::new(move || {
            n2.fetch_add(1, Ordering::Relaxed);
        })));
        log.push([6; 16]);
        assert_eq!(n.load(Ordering::Relaxed), 1);
        let r = log.take(1);
        log.unget(r.clone());
        assert_eq!(log.take(1), r);
    }
}
