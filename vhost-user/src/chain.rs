//! Descriptor chains of the amdvi queues: direction, lengths and guest
//! addresses checked, the readable part gathered, the writable part kept
//! as a list of guest ranges to write the response into.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use iommu_dev::Mem;

/// The largest readable part a request can have: header, ENDPOINT body and 64 KiB of data.
pub const MAX_READABLE: usize = 8 + 24 + 65536;

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a device-readable descriptor follows a device-writable one")]
    WrongDirection,
    #[error("descriptor at {gpa:#x} (+{len}) is outside guest memory")]
    OutsideMemory { gpa: u64, len: u32 },
    #[error("the readable part is longer than {MAX_READABLE} bytes")]
    TooLong,
    #[error("the chain has no descriptor")]
    Empty,
}

/// A checked chain.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub head: u16,
    /// The readable bytes, gathered.
    pub readable: Vec<u8>,
    /// (GPA, length) of each readable descriptor, in order.
    pub readable_segs: Vec<(u64, u32)>,
    /// (GPA, length) of each writable descriptor, in order.
    pub writable: Vec<(u64, u32)>,
    /// Why the chain is malformed; the writable part may still take a status.
    pub error: Option<ChainError>,
}

impl Parsed {
    pub fn writable_len(&self) -> usize {
        self.writable.iter().map(|w| w.1 as usize).sum()
    }

    /// GPA of byte `off` of the readable part.
    pub fn readable_gpa(&self, off: usize) -> u64 {
        let mut rem = off as u64;
        for &(gpa, len) in &self.readable_segs {
            if rem < u64::from(len) {
                return gpa + rem;
            }
            rem -= u64::from(len);
        }
        0
    }
}

fn in_memory(mem: &Mem, gpa: u64, len: u32) -> bool {
    len == 0 || iommu_dev::mem::in_ram(mem, gpa, u64::from(len))
}

/// Check a chain (from `mem`) and gather its readable part.
pub fn parse<M>(mem: &Mem, chain: DescriptorChain<M>) -> Parsed
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut p = Parsed {
        head: chain.head_index(),
        ..Default::default()
    };
    let mut seen_writable = false;
    let mut readable_total = 0usize;
    let mut n = 0usize;
    for d in chain {
        n += 1;
        let (gpa, len) = (d.addr().0, d.len());
        if d.is_write_only() {
            seen_writable = true;
            if !in_memory(mem, gpa, len) {
                p.error
                    .get_or_insert(ChainError::OutsideMemory { gpa, len });
                continue;
            }
            p.writable.push((gpa, len));
        } else {
            if seen_writable {
                p.error.get_or_insert(ChainError::WrongDirection);
                continue;
            }
            readable_total = readable_total.saturating_add(len as usize);
            if readable_total > MAX_READABLE {
                p.error.get_or_insert(ChainError::TooLong);
                continue;
            }
            if !in_memory(mem, gpa, len) {
                p.error
                    .get_or_insert(ChainError::OutsideMemory { gpa, len });
                continue;
            }
            p.readable_segs.push((gpa, len));
        }
    }
    if n == 0 {
        p.error = Some(ChainError::Empty);
    }
    if p.error.is_none() {
        let mut buf = vec![0u8; readable_total];
        let mut off = 0usize;
        for &(gpa, len) in &p.readable_segs {
            let end = off + len as usize;
            if mem
                .read_slice(&mut buf[off..end], GuestAddress(gpa))
                .is_err()
            {
                p.error = Some(ChainError::OutsideMemory { gpa, len });
                break;
            }
            off = end;
        }
        p.readable = buf;
    }
    p
}

/// Write `bytes` into the writable ranges in order; returns the bytes written.
pub fn write_response(mem: &Mem, writable: &[(u64, u32)], bytes: &[u8]) -> u32 {
    let mut done = 0usize;
    for &(gpa, len) in writable {
        if done >= bytes.len() {
            break;
        }
        let n = (len as usize).min(bytes.len() - done);
        if mem
            .write_slice(&bytes[done..done + n], GuestAddress(gpa))
            .is_err()
        {
            break;
        }
        done += n;
    }
    done as u32
}
