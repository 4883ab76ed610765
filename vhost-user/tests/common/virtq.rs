//! A split virtqueue driven by the test as a guest driver drives it:
//! descriptor table, available and used rings laid out in guest memory by
//! hand, chains added and reaped, kick and call eventfds, EVENT_IDX.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::Mem;

/// A split virtqueue driven by the test.
pub struct Vq {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub kick: EventFd,
    pub call: EventFd,
    next_avail: u16,
    last_used: u16,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    pub done: HashMap<u16, u32>,
    pub event_idx: bool,
}

const VRING_DESC_F_NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const VRING_DESC_F_WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

impl Vq {
    pub(super) fn new(base: u64, size: u16) -> Vq {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 4095) & !4095;
        Vq {
            size,
            desc,
            avail,
            used,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
            next_avail: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            done: HashMap::new(),
            event_idx: false,
        }
    }

    pub(super) fn reset(&mut self, mem: &Mem) {
        let n = u64::from(self.size);
        mem.write_slice(
            &vec![0u8; (self.used + 6 + 8 * n - self.desc) as usize],
            GuestAddress(self.desc),
        )
        .unwrap();
        *self = Vq {
            event_idx: self.event_idx,
            kick: self.kick.try_clone().unwrap(),
            call: self.call.try_clone().unwrap(),
            ..Vq::new(self.desc, self.size)
        };
    }

    /// Put a chain (gpa, len, device-writable) on the ring and kick.
    pub fn add(&mut self, mem: &Mem, bufs: &[(u64, u32, bool)]) -> u16 {
        let b: Vec<(u64, u32, u16)> = bufs
            .iter()
            .map(|&(g, l, wr)| (g, l, if wr { VRING_DESC_F_WRITE } else { 0 }))
            .collect();
        self.add_flags(mem, &b)
    }

    /// As [`Vq::add`] with raw descriptor flags (NEXT is added).
    pub fn add_flags(&mut self, mem: &Mem, bufs: &[(u64, u32, u16)]) -> u16 {
        assert!(
            !bufs.is_empty() && bufs.len() <= self.free.len(),
            "ring full"
        );
        let idx: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, &(gpa, len, f)) in bufs.iter().enumerate() {
            let mut flags = f;
            let next = if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
                idx[i + 1]
            } else {
                0
            };
            let at = self.desc + 16 * u64::from(idx[i]);
            mem.write_obj(gpa, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let head = idx[0];
        self.chains.insert(head, idx);
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
        fence(Ordering::SeqCst);
        self.kick.write(1).unwrap();
        head
    }

    /// Put one VIRTQ_DESC_F_INDIRECT descriptor on the ring and kick.
    pub fn add_indirect(&mut self, mem: &Mem, table: u64, len: u32) -> u16 {
        self.add_flags(mem, &[(table, len, 4)])
    }

    /// Collect used entries.
    pub fn reap(&mut self, mem: &Mem) {
        fence(Ordering::SeqCst);
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        fence(Ordering::SeqCst);
        while self.last_used != idx {
            let e = self.used + 4 + 8 * u64::from(self.last_used % self.size);
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
            let head = id as u16;
            let chain = self
                .chains
                .remove(&head)
                .unwrap_or_else(|| panic!("device returned unknown head {head}"));
            self.free.extend(chain);
            assert!(self.done.insert(head, len).is_none());
            self.last_used = self.last_used.wrapping_add(1);
        }
        if self.event_idx {
            // used_event: be told about the next used entry.
            let at = self.avail + 4 + 2 * u64::from(self.size);
            mem.write_obj(self.last_used, GuestAddress(at)).unwrap();
            fence(Ordering::SeqCst);
            // Entries may have landed before the write: check again.
            let idx2: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
            if idx2 != idx {
                self.reap(mem);
            }
        }
    }

    /// Wait for `head` to be returned; its used length.
    pub fn wait(&mut self, mem: &Mem, head: u16, timeout: Duration) -> Option<u32> {
        let end = Instant::now() + timeout;
        loop {
            self.reap(mem);
            if let Some(l) = self.done.remove(&head) {
                return Some(l);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            wait_fd(
                self.call.as_raw_fd(),
                (end - now).min(Duration::from_millis(20)),
            );
            let _ = self.call.read();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.chains.len()
    }
}

/// Wait up to `t` for `fd` to become readable.
pub(super) fn wait_fd(fd: i32, t: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, t.as_millis() as i32) };
}
