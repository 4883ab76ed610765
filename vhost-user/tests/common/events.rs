//! The event queue: buffers the guest posts, and the event and PPR records
//! the daemon returns in them, oldest first.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vhost_device_amdvi::virtio_amdvi as w;
use vm_memory::{Bytes, GuestAddress};

use super::virtq::wait_fd;
use super::*;

impl Guest {
    /// Post `n` event buffers of `size` bytes.
    pub fn post_event_buffers(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let gpa = EVBUF_BASE + (self.ev_next % 48) as u64 * EVBUF_SIZE;
            self.ev_next += 1;
            let h = self.evq.add(&self.mem, &[(gpa, size, true)]);
            self.evbufs.push(h);
            let _ = gpa;
        }
    }

    /// Records of event buffers returned within `timeout` (at least `min`).
    pub fn events(&mut self, min: usize, timeout: Duration) -> Vec<w::EventRec> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            self.evq.reap(&self.mem);
            let heads: Vec<u16> = self.evq.done.keys().copied().collect();
            // Oldest buffers first (they were posted in order).
            let mut order: Vec<(usize, u16)> = heads
                .iter()
                .filter_map(|h| self.evbufs.iter().position(|x| x == h).map(|p| (p, *h)))
                .collect();
            order.sort();
            for (_, h) in order {
                let len = self.evq.done.remove(&h).unwrap();
                let pos = self.evbufs.iter().position(|x| *x == h).unwrap();
                self.evbufs.remove(pos);
                let gpa = self.ev_gpa(h);
                assert_eq!(len % 24, 0, "event buffer used length {len}");
                for i in 0..(len / 24) as u64 {
                    out.push(self.mem.read_obj(GuestAddress(gpa + 24 * i)).unwrap());
                }
            }
            if out.len() >= min || Instant::now() >= end {
                return out;
            }
            wait_fd(self.evq.call.as_raw_fd(), Duration::from_millis(20));
            let _ = self.evq.call.read();
        }
    }

    fn ev_gpa(&self, head: u16) -> u64 {
        let at = self.evq.desc + 16 * u64::from(head);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// Used length of event buffers returned so far (raw).
    pub fn event_used(&mut self, head: u16, timeout: Duration) -> Option<u32> {
        self.evq.wait(&self.mem, head, timeout)
    }
}
