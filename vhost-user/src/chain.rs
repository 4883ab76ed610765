//! Descriptor chains of the amdvi queues: direction, lengths and guest
//! addresses checked, the readable part gathered, the writable part kept
//! as a list of guest ranges to write the response into.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use iommu_dev::Mem;

use crate::virtio_amdvi as w;

/// The largest readable part a request can have: header, ENDPOINT body and 64 KiB of data.
pub const MAX_READABLE: usize =
    size_of::<w::ReqHdr>() + size_of::<w::Endpoint>() + w::ep::MAX_LEN as usize;

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

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> Mem {
        iommu_dev::mem::anon(0x40_0000)
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Parse the chain made of `descs` (NEXT flags are added).
    fn parse_descs(m: &Mem, descs: &[RawDescriptor]) -> Parsed {
        let q = MockSplitQueue::new(m, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        parse(m, chain)
    }

    #[test]
    fn gathers_split_readable_part() {
        let m = mem();
        m.write_slice(&[1, 2, 3], GuestAddress(0x10_0000)).unwrap();
        m.write_slice(&[4, 5], GuestAddress(0x20_0000)).unwrap();
        let p = parse_descs(
            &m,
            &[
                desc(0x10_0000, 3, 0),
                desc(0x20_0000, 2, 0),
                desc(0x30_0000, 8, F_WRITE),
                desc(0x30_1000, 100, F_WRITE),
            ],
        );
        assert_eq!(p.error, None);
        assert_eq!(p.readable, vec![1, 2, 3, 4, 5]);
        assert_eq!(p.writable, vec![(0x30_0000, 8), (0x30_1000, 100)]);
        assert_eq!(p.writable_len(), 108);
        assert_eq!(p.readable_gpa(0), 0x10_0000);
        assert_eq!(p.readable_gpa(2), 0x10_0002);
        assert_eq!(p.readable_gpa(3), 0x20_0000);
        assert_eq!(p.readable_gpa(4), 0x20_0001);
        // The response spans the writable descriptors.
        let n = write_response(&m, &p.writable, &[9u8; 12]);
        assert_eq!(n, 12);
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0x30_1000)).unwrap();
        assert_eq!(b, [9; 4]);
    }

    #[test]
    fn wrong_direction() {
        let m = mem();
        let p = parse_descs(
            &m,
            &[
                desc(0x10_0000, 8, 0),
                desc(0x30_0000, 8, F_WRITE),
                desc(0x10_1000, 8, 0),
            ],
        );
        assert_eq!(p.error, Some(ChainError::WrongDirection));
        assert_eq!(p.writable_len(), 8, "a status can still be written");
    }

    #[test]
    fn outside_memory() {
        let m = mem();
        let p = parse_descs(&m, &[desc(0x3f_fffc, 8, 0), desc(0x30_0000, 8, F_WRITE)]);
        assert_eq!(
            p.error,
            Some(ChainError::OutsideMemory {
                gpa: 0x3f_fffc,
                len: 8
            })
        );
        let p = parse_descs(&m, &[desc(0x10_0000, 8, 0), desc(0x40_0000, 8, F_WRITE)]);
        assert!(matches!(p.error, Some(ChainError::OutsideMemory { .. })));
        assert_eq!(p.writable_len(), 0, "nowhere to write");
        let p = parse_descs(&m, &[desc(u64::MAX - 3, 8, 0), desc(0x30_0000, 8, F_WRITE)]);
        assert!(matches!(p.error, Some(ChainError::OutsideMemory { .. })));
    }

    #[test]
    fn too_long() {
        let m = mem();
        let p = parse_descs(
            &m,
            &[
                desc(0x10_0000, 0x1_0000, 0),
                desc(0x20_0000, 0x1_0000, 0),
                desc(0x30_0000, 8, F_WRITE),
            ],
        );
        assert_eq!(p.error, Some(ChainError::TooLong));
        assert!(p.readable.is_empty());
    }

    #[test]
    fn writable_only_and_zero_length() {
        let m = mem();
        let p = parse_descs(&m, &[desc(0x30_0000, 24, F_WRITE)]);
        assert_eq!(p.error, None);
        assert!(p.readable.is_empty() && p.readable_segs.is_empty());
        let p = parse_descs(&m, &[desc(0x10_0000, 0, 0), desc(0x30_0000, 8, F_WRITE)]);
        assert_eq!(p.error, None);
        assert!(p.readable.is_empty());
    }

    #[test]
    fn looping_chain_ends() {
        // A chain whose last descriptor points back at the first: the
        // iterator stops after queue-size descriptors and parsing ends.
        let m = mem();
        let q = MockSplitQueue::new(&m, 4);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 8, F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 8, F_NEXT, 0)),
        ];
        let chain = q.build_multiple_desc_chains(&descs).unwrap();
        let p = parse(&m, chain);
        assert_eq!(p.error, None);
        assert_eq!(p.readable.len(), 8 * 4, "bounded by the queue size");
    }
}
