//! A test driver for vhost-device-amdvi, shared by the daemon's integration
//! tests and its bench: the daemon on a Unix socket in a temporary
//! directory ([`daemon`]), a vhost-user frontend (the `vhost` crate's
//! `Frontend`) with memfd guest memory shared with the daemon ([`guest`]),
//! split virtqueues laid out in it by hand with kick/call eventfds
//! ([`virtq`]), requests and their replies ([`requests`]), the event queue
//! ([`events`]), and the AMD IOMMU data structures (device table, GCR3
//! table, 4-level x86-64 page tables) written the way a guest driver writes
//! them, with the guest fixture of `iommu_dev::pgtable` ([`tables`]). It
//! uses only what docs/protocol.md describes.

#![allow(dead_code)]

pub mod daemon;
pub mod events;
pub mod guest;
pub mod requests;
pub mod tables;
pub mod virtq;

// Each test file uses a part of the driver: a glob it takes nothing from
// is not an error.
#[allow(unused_imports)]
pub use {daemon::*, guest::*, requests::*, tables::*, virtq::*};

use vm_memory::GuestMemoryMmap;

pub type Mem = GuestMemoryMmap<()>;

pub const MEM_SIZE: usize = 64 << 20;
pub use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
pub use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

// Guest-physical layout.
pub const REQQ_BASE: u64 = 0x1_0000;
pub const EVQ_BASE: u64 = 0x4_0000;
pub const SLOTS_BASE: u64 = 0x10_0000;
pub const SLOT_SIZE: u64 = 0x2_4000;
pub const SLOT_WRITABLE: u64 = 0x1_2000;
pub const NSLOTS: usize = 32;
pub const EVBUF_BASE: u64 = 0x80_0000;
pub const EVBUF_SIZE: u64 = 0x1000;
pub const DEVTAB: u64 = 0x100_0000;
pub const GCR3: u64 = 0x101_0000;
pub const STORE_AREA: u64 = 0x102_0000;
pub const PT_POOL: u64 = 0x110_0000;
pub const DATA_POOL: u64 = 0x200_0000;
/// Scratch area tests use for hand-made chains.
pub const SCRATCH: u64 = 0x180_0000;

pub const EP0: u16 = 0x0010;
pub const EP1: u16 = 0x0011;
pub const PASID: u32 = 1;
