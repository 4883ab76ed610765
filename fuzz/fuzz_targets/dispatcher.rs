//! The request dispatcher fed arbitrary descriptor chains through
//! virtio-queue's mock split queue: chain checks, the request on the model,
//! the response written back. Input: one byte of descriptor count, 14 bytes
//! per descriptor (GPA, length, flags), then guest memory. STREAM_START is
//! skipped (a stream runs on its own threads until stopped).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vhost_device_amdvi::amdvi::{Device, Outcome};
use vhost_device_amdvi::chain;
use vhost_device_amdvi::virtio_amdvi::req;
use vhost_device_amdvi::DaemonConfig;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryAtomic};

#[path = "common.rs"]
mod common;

/// The mock queue's rings sit at the end of RAM, out of the descriptors' way.
const RING: u64 = common::RAM as u64 - 0x1000;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8) + 1;
    if rest.len() < 14 * n {
        return;
    }
    let descs: Vec<RawDescriptor> = rest[..14 * n]
        .chunks_exact(14)
        .map(|d| {
            let addr = common::u64_at(d, 0) % (common::RAM as u64 + 0x2000);
            let len = u32::from_le_bytes([d[8], d[9], d[10], d[11]]) % 0x2_0000;
            // WRITE and INDIRECT only: NEXT is the mock queue's business.
            let flags = u16::from_le_bytes([d[12], d[13]]) & 0x6;
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
        })
        .collect();
    let mem = common::guest_memory(&rest[14 * n..]);
    let q = MockSplitQueue::create(&mem, GuestAddress(RING), 16);
    let Ok(c) = q.build_desc_chain(&descs) else {
        return;
    };
    let p = chain::parse(&mem, c);
    if p.error.is_some() || p.writable_len() < 8 {
        return;
    }
    let ty = p
        .readable
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    if ty == Some(req::STREAM_START) {
        return;
    }
    let mut cfg = DaemonConfig::default();
    cfg.iommu.pri_timeout = Duration::from_millis(1);
    let dev = Device::new(&cfg, GuestMemoryAtomic::new(mem.clone()));
    let r = match dev.handle(&p.readable, &|off| p.readable_gpa(off), p.writable_len()) {
        Outcome::Done(r) => r,
        Outcome::Deferred(work) => work(),
    };
    let len = chain::write_response(&mem, &p.writable, &r.to_bytes());
    assert!(len as usize <= p.writable_len());
});
