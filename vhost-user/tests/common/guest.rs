//! The test guest: memfd guest memory shared with the daemon, the
//! frontend's handshake (features, protocol features, memory table), and
//! the two queues started, reset and restarted as QEMU does.

use std::fs::File;
use std::os::fd::FromRawFd;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend};

use super::*;

/// The guest: memory, frontend, queues, and IOMMU tables.
pub struct Guest {
    pub mem: Mem,
    _file: File,
    pub fe: Frontend,
    pub reqq: Vq,
    pub evq: Vq,
    pub(super) free_slots: Vec<usize>,
    pub(super) pt_next: u64,
    pub(super) data_next: u64,
    pub cr3: u64,
    pub(super) evbufs: Vec<u16>,
    pub(super) ev_next: usize,
    pub features: u64,
    _watchdog: Watchdog,
}

fn memfd(size: usize) -> File {
    let name = c"amdvi-test";
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fd is a fresh descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size as u64).unwrap();
    f
}

impl Guest {
    /// Connect with the features a Linux guest acks (VERSION_1, EVENT_IDX, INDIRECT_DESC).
    pub fn connect(d: &Daemon) -> Guest {
        Self::connect_with(d, true)
    }

    pub fn connect_with(d: &Daemon, event_idx: bool) -> Guest {
        Self::connect_path(&d.sock, event_idx)
    }

    /// Connect to a daemon listening on `sock`.
    pub fn connect_path(sock: &std::path::Path, event_idx: bool) -> Guest {
        let mut g = Self::connect_no_queues(sock, event_idx);
        g.start_queues();
        g
    }

    /// Connect, negotiate and send the memory table; the queues are not set up.
    pub fn connect_no_queues(sock: &std::path::Path, event_idx: bool) -> Guest {
        let file = memfd(MEM_SIZE);
        let mem = Mem::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let (mut fe, watchdog) = frontend(sock);
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        let mut want = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if event_idx {
            want |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        assert_eq!(offered & want, want, "features offered {offered:#x}");
        fe.set_features(want).unwrap();
        let pf = fe.get_protocol_features().unwrap();
        let need = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        assert!(pf.contains(need), "protocol features {pf:?}");
        fe.set_protocol_features(need).unwrap();
        let region = mem.iter().next().unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        fe.set_mem_table(&[info]).unwrap();
        let mut g = Guest {
            mem,
            _file: file,
            fe,
            reqq: Vq::new(REQQ_BASE, 256),
            evq: Vq::new(EVQ_BASE, 64),
            free_slots: (0..NSLOTS).rev().collect(),
            pt_next: PT_POOL,
            data_next: DATA_POOL,
            cr3: 0,
            evbufs: Vec::new(),
            ev_next: 0,
            features: want,
            _watchdog: watchdog,
        };
        g.reqq.event_idx = event_idx;
        g.evq.event_idx = event_idx;
        g
    }

    /// The memfd behind guest memory (tests shrink it).
    pub fn memory_file(&self) -> &File {
        &self._file
    }

    /// Host address of guest-physical `gpa` in this process's mapping.
    pub fn host_addr(&self, gpa: u64) -> u64 {
        self.hva(gpa)
    }

    fn hva(&self, gpa: u64) -> u64 {
        self.mem.iter().next().unwrap().as_ptr() as u64 + gpa
    }

    /// SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE for both queues.
    pub fn start_queues(&mut self) {
        for (i, q) in [&self.reqq, &self.evq].into_iter().enumerate() {
            let base = self.mem.iter().next().unwrap().as_ptr() as u64;
            self.fe.set_vring_num(i, q.size).unwrap();
            self.fe
                .set_vring_addr(
                    i,
                    &VringConfigData {
                        queue_max_size: q.size,
                        queue_size: q.size,
                        flags: 0,
                        desc_table_addr: base + q.desc,
                        used_ring_addr: base + q.used,
                        avail_ring_addr: base + q.avail,
                        log_addr: None,
                    },
                )
                .unwrap();
            self.fe.set_vring_base(i, 0).unwrap();
            self.fe.set_vring_call(i, &q.call).unwrap();
            self.fe.set_vring_kick(i, &q.kick).unwrap();
            self.fe.set_vring_enable(i, true).unwrap();
        }
        let _ = self.hva(0);
    }

    /// Stop both rings (GET_VRING_BASE, as QEMU does when the guest resets
    /// the device) and start them again from scratch.
    pub fn reset_device(&mut self) {
        for i in 0..2 {
            self.fe.get_vring_base(i).unwrap();
        }
        self.restart_queues();
    }

    /// Lay the rings out afresh and start them (after GET_VRING_BASE).
    pub fn restart_queues(&mut self) {
        self.reqq.reset(&self.mem);
        self.evq.reset(&self.mem);
        self.free_slots = (0..NSLOTS).rev().collect();
        self.evbufs.clear();
        self.start_queues();
    }

    pub fn config(&mut self) -> [u8; 8] {
        let (_, buf) = self
            .fe
            .get_config(
                0,
                8,
                vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                &[0; 8],
            )
            .unwrap();
        buf.try_into().unwrap()
    }
}
