//! Shared by the targets: guest memory made of fuzz bytes.

use iommu_dev::Mem;
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM of the targets: 64 KiB at GPA 0.
pub const RAM: usize = 64 << 10;

/// `RAM` bytes of guest memory at GPA 0, starting with `image`.
pub fn guest_memory(image: &[u8]) -> Mem {
    let m = Mem::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest memory");
    let n = image.len().min(RAM);
    m.write_slice(&image[..n], GuestAddress(0)).expect("inside RAM");
    m
}

/// Little-endian u64 at `at` of `b`, zero-padded.
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    for (i, v) in w.iter_mut().enumerate() {
        *v = b.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(w)
}
