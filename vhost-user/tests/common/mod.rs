//! A test driver for vhost-device-amdvi: the daemon on a Unix socket in a
//! temporary directory, and a vhost-user frontend (the `vhost` crate's
//! `Frontend`) with memfd guest memory shared with the daemon, split
//! virtqueues laid out in it by hand, kick/call eventfds, and the AMD IOMMU
//! data structures (device table, GCR3 table, 4-level x86-64 page tables)
//! written the way a guest driver writes them, with the guest fixture of
//! `iommu_dev::pgtable`. It uses only what docs/protocol.md describes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::atomic::{fence, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iommu_dev::pgtable::{self, Tables, DIR};
use iommu_dev::{Command, DevTableBase, Dte, SRange};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_device_amdvi::virtio_amdvi::{self as w, Status};
use vhost_device_amdvi::{start_backend, DaemonConfig, Options, StopSignal, Totals};
use vm_memory::{ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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

pub use iommu_dev::control::{
    EVENT_LOG_EN as CTRL_EVENT_LOG_EN, GT_EN as CTRL_GT_EN, IOMMU_EN as CTRL_IOMMU_EN,
    PPR_EN as CTRL_PPR_EN, PPR_LOG_EN as CTRL_PPR_LOG_EN,
};
/// Every Control bit a Linux driver sets for SVA.
pub const CTRL_ALL: u64 =
    CTRL_IOMMU_EN | CTRL_EVENT_LOG_EN | CTRL_PPR_LOG_EN | CTRL_PPR_EN | CTRL_GT_EN;

/// A user read-write leaf: present, writable, user.
pub use iommu_dev::pgtable::USER_RW as PTE_URW;

pub const EP0: u16 = 0x0010;
pub const EP1: u16 = 0x0011;
pub const PASID: u32 = 1;

/// The daemon as a thread of the test process.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    stop: StopSignal,
    thread: Option<JoinHandle<vhost_device_amdvi::Result<Totals>>>,
}

impl Daemon {
    pub fn start(toml: &str) -> Daemon {
        let cfg = DaemonConfig::from_toml("test.toml", toml).expect("test config");
        Self::start_cfg(cfg)
    }

    pub fn start_cfg(cfg: DaemonConfig) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("amdvi.sock");
        let stop = StopSignal::new().unwrap();
        let stop2 = stop.try_clone().unwrap();
        let s = sock.clone();
        let opts = Options {
            stats_json: Some(dir.path().join("stats.json")),
            ..Options::default()
        };
        let thread = std::thread::spawn(move || start_backend(&cfg, &s, &opts, &stop2));
        Daemon {
            dir,
            sock,
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Totals {
        self.stop.stop();
        self.thread
            .take()
            .unwrap()
            .join()
            .unwrap()
            .expect("daemon result")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.stop();
            let _ = t.join();
        }
    }
}

/// How long a test frontend's connection may last. The `vhost` crate's
/// frontend retries a read that times out (SO_RCVTIMEO gives EAGAIN, which
/// it treats as "retry"), so a read timeout would not stop it; instead a
/// watchdog shuts the socket down after this long, the pending read sees
/// the end of the stream and the test fails instead of hanging.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// Shuts its connection down [`WATCHDOG`] after it was made, unless
/// dropped first.
pub struct Watchdog {
    _alive: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    pub fn new(sock: &std::os::unix::net::UnixStream) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let s = sock.try_clone().unwrap();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
                eprintln!("test frontend: no end after {WATCHDOG:?}: shutting the connection down");
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        });
        Watchdog { _alive: tx }
    }
}

/// Connect to `sock`, retrying for 5 s (the daemon may still be starting
/// or finishing the previous connection).
pub fn connect_stream(sock: &std::path::Path) -> std::os::unix::net::UnixStream {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(s) => return s,
            Err(e) if Instant::now() < end => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    }
}

/// A vhost-user frontend on `sock`, guarded by a [`Watchdog`].
pub fn frontend(sock: &std::path::Path) -> (Frontend, Watchdog) {
    let s = connect_stream(sock);
    let dog = Watchdog::new(&s);
    (Frontend::from_stream(s, w::NUM_QUEUES as u64), dog)
}

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
    fn new(base: u64, size: u16) -> Vq {
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

    fn reset(&mut self, mem: &Mem) {
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

fn wait_fd(fd: i32, t: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, t.as_millis() as i32) };
}

/// A reply to a request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub used: u32,
    pub status: Option<Status>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn obj<T: ByteValued + Default>(&self) -> T {
        w::read_obj(&self.body).expect("response body too short")
    }
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub head: u16,
    slot: usize,
    room: usize,
}

impl Ticket {
    /// GPA of the request's readable part (its header).
    pub fn readable_gpa(&self) -> u64 {
        SLOTS_BASE + self.slot as u64 * SLOT_SIZE
    }
}

/// The guest: memory, frontend, queues, and IOMMU tables.
pub struct Guest {
    pub mem: Mem,
    _file: File,
    pub fe: Frontend,
    pub reqq: Vq,
    pub evq: Vq,
    free_slots: Vec<usize>,
    pt_next: u64,
    data_next: u64,
    pub cr3: u64,
    evbufs: Vec<u16>,
    ev_next: usize,
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

    // ---- requests ----

    /// Submit a request: header + body readable (split into `split`-byte
    /// descriptors when given), `room` writable bytes after the header.
    pub fn submit_split(
        &mut self,
        ty: u32,
        body: &[u8],
        room: usize,
        split: Option<usize>,
    ) -> Ticket {
        let slot = self.free_slots.pop().expect("no free request slot");
        let base = SLOTS_BASE + slot as u64 * SLOT_SIZE;
        let mut rd = Vec::with_capacity(8 + body.len());
        rd.extend_from_slice(&ty.to_le_bytes());
        rd.extend_from_slice(&0u32.to_le_bytes());
        rd.extend_from_slice(body);
        self.mem.write_slice(&rd, GuestAddress(base)).unwrap();
        let wbase = base + SLOT_WRITABLE;
        self.mem
            .write_slice(&vec![0xeeu8; 8 + room], GuestAddress(wbase))
            .unwrap();
        let mut descs = Vec::new();
        let step = split.unwrap_or(rd.len()).max(1);
        let mut off = 0;
        while off < rd.len() {
            let n = step.min(rd.len() - off);
            descs.push((base + off as u64, n as u32, false));
            off += n;
        }
        descs.push((wbase, 8, true));
        if room > 0 {
            descs.push((wbase + 8, room as u32, true));
        }
        let head = self.reqq.add(&self.mem, &descs);
        Ticket { head, slot, room }
    }

    pub fn submit(&mut self, ty: u32, body: &[u8], room: usize) -> Ticket {
        self.submit_split(ty, body, room, None)
    }

    pub fn wait_timeout(&mut self, t: Ticket, timeout: Duration) -> Option<Reply> {
        let used = self.reqq.wait(&self.mem, t.head, timeout)?;
        self.free_slots.push(t.slot);
        let wbase = SLOTS_BASE + t.slot as u64 * SLOT_SIZE + SLOT_WRITABLE;
        let mut buf = vec![0u8; 8 + t.room];
        self.mem.read_slice(&mut buf, GuestAddress(wbase)).unwrap();
        let status = (used >= 8).then(|| {
            Status::from_u32(u32::from_le_bytes(buf[..4].try_into().unwrap())).expect("status code")
        });
        if used >= 8 {
            assert_eq!(&buf[4..8], &[0; 4], "response reserved field");
        }
        let body = buf[8.min(used as usize)..(used as usize).min(buf.len())].to_vec();
        Some(Reply { used, status, body })
    }

    pub fn wait(&mut self, t: Ticket) -> Reply {
        self.wait_timeout(t, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no response to request {}", t.head))
    }

    pub fn request(&mut self, ty: u32, body: &[u8], room: usize) -> Reply {
        let t = self.submit(ty, body, room);
        self.wait(t)
    }

    /// Submit a hand-made chain; returns the head.
    pub fn submit_raw(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        self.reqq.add(&self.mem, descs)
    }

    /// Submit a chain made of one indirect descriptor.
    pub fn submit_indirect(&mut self, table: u64, len: u32) -> u16 {
        self.reqq.add_indirect(&self.mem, table, len)
    }

    pub fn wait_raw(&mut self, head: u16) -> u32 {
        self.reqq
            .wait(&self.mem, head, Duration::from_secs(10))
            .expect("no used entry")
    }

    pub fn info(&mut self) -> w::Info {
        let r = self.request(w::req::INFO, &[], 328);
        assert_eq!(r.status, Some(Status::Ok));
        r.obj()
    }

    pub fn stats(&mut self) -> Vec<u64> {
        let r = self.request(w::req::STATS, &[], 8 + 8 * 64);
        assert_eq!(r.status, Some(Status::Ok));
        let n = u32::from_le_bytes(r.body[..4].try_into().unwrap()) as usize;
        (0..n)
            .map(|i| u64::from_le_bytes(r.body[8 + 8 * i..16 + 8 * i].try_into().unwrap()))
            .collect()
    }

    pub fn set_devtab(&mut self, base: u64, control: u64) -> Option<Status> {
        let mut b = Vec::new();
        b.extend_from_slice(&base.to_le_bytes());
        b.extend_from_slice(&control.to_le_bytes());
        self.request(w::req::SET_DEVTAB, &b, 0).status
    }

    pub fn commands_ticket(&mut self, cmds: &[[u8; 16]]) -> Ticket {
        let mut b = Vec::new();
        b.extend_from_slice(&(cmds.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for c in cmds {
            b.extend_from_slice(c);
        }
        self.submit(w::req::COMMANDS, &b, 16)
    }

    pub fn commands(&mut self, cmds: &[Command]) -> Reply {
        let raw: Vec<[u8; 16]> = cmds.iter().map(Command::encode).collect();
        let t = self.commands_ticket(&raw);
        self.wait(t)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn endpoint_ticket(
        &mut self,
        devid: u16,
        op: u8,
        flags: u8,
        pasid: u32,
        va: u64,
        len: u32,
        data: &[u8],
    ) -> Ticket {
        let e = w::Endpoint {
            devid: devid.into(),
            op,
            flags,
            pasid: pasid.into(),
            va: va.into(),
            len: len.into(),
            reserved: 0.into(),
        };
        let mut b = e.as_slice().to_vec();
        b.extend_from_slice(data);
        let room = 16
            + if op == w::ep::OP_READ {
                len as usize
            } else {
                0
            };
        self.submit(w::req::ENDPOINT, &b, room)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn endpoint(
        &mut self,
        devid: u16,
        op: u8,
        flags: u8,
        pasid: u32,
        va: u64,
        len: u32,
        data: &[u8],
    ) -> Reply {
        let t = self.endpoint_ticket(devid, op, flags, pasid, va, len, data);
        self.wait(t)
    }

    pub fn read(&mut self, devid: u16, va: u64, len: u32) -> Reply {
        self.endpoint(devid, w::ep::OP_READ, 0, PASID, va, len, &[])
    }

    pub fn write(&mut self, devid: u16, va: u64, data: &[u8]) -> Reply {
        self.endpoint(
            devid,
            w::ep::OP_WRITE,
            0,
            PASID,
            va,
            data.len() as u32,
            data,
        )
    }

    // ---- events ----

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

    // ---- IOMMU tables ----

    /// Take a data page (not zeroed: the daemon and the test write it).
    pub fn alloc_page(&mut self) -> u64 {
        let p = self.data_next;
        self.data_next += 0x1000;
        p
    }

    /// Device table with DTEs for EP0 (domain 1) and EP1 (domain 2), both
    /// using one 1-level GCR3 table whose PASID 1 entry is a fresh 4-level
    /// page table; SET_DEVTAB with every control bit a Linux driver sets.
    pub fn setup_iommu(&mut self) {
        self.mem
            .write_slice(&[0u8; 4096], GuestAddress(DEVTAB))
            .unwrap();
        self.mem
            .write_slice(&[0u8; 4096], GuestAddress(GCR3))
            .unwrap();
        for (devid, dom) in [(EP0, 1u16), (EP1, 2)] {
            pgtable::write_dte(
                &self.mem,
                DEVTAB,
                devid,
                &Dte::encode_v2(dom, GCR3, 0, true, false),
            );
        }
        let mut t = Tables::resume(&self.mem, 4, 0, self.pt_next);
        self.cr3 = t.alloc_table();
        self.pt_next = t.pool_next();
        pgtable::write_gcr3_entry(&self.mem, GCR3, u64::from(PASID), self.cr3);
        assert_eq!(
            self.set_devtab(DevTableBase::encode(DEVTAB, 1), CTRL_ALL),
            Some(Status::Ok)
        );
    }

    /// The GPA of the level-1 entry for `va`, creating tables on the way.
    pub fn pte_gpa(&mut self, va: u64) -> u64 {
        let mut t = Tables::resume(&self.mem, 4, self.cr3, self.pt_next);
        let at = t.entry_gpa_alloc(va, 1, DIR);
        self.pt_next = t.pool_next();
        at
    }

    pub fn map(&mut self, va: u64, pa: u64, flags: u64) {
        let at = self.pte_gpa(va);
        self.mem.write_obj(pa | flags, GuestAddress(at)).unwrap();
    }

    pub fn unmap(&mut self, va: u64) {
        let at = self.pte_gpa(va);
        self.mem.write_obj(0u64, GuestAddress(at)).unwrap();
    }

    /// Map `pages` fresh pages at `va`; returns their PAs.
    pub fn map_range(&mut self, va: u64, pages: usize) -> Vec<u64> {
        (0..pages)
            .map(|i| {
                let pa = self.alloc_page();
                self.map(va + 0x1000 * i as u64, pa, PTE_URW);
                pa
            })
            .collect()
    }

    pub fn read_u64(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }
}

/// Commands a driver sends after changing a mapping of PASID 1.
pub fn flush_cmds(devid: u16, domain: u16, store: Option<(u64, u64)>) -> Vec<Command> {
    let mut v = vec![
        Command::InvalidateIommuPages {
            domain_id: domain,
            pasid: PASID,
            gn: true,
            pde: true,
            range: SRange::EVERYTHING,
        },
        Command::InvalidateIotlbPages {
            devid,
            pasid: PASID,
            gn: true,
            maxpend: 0,
            queue_id: 0,
            range: SRange::EVERYTHING,
        },
    ];
    if let Some((addr, data)) = store {
        v.push(Command::CompletionWait {
            store: true,
            interrupt: false,
            flush: false,
            addr,
            data,
        });
    }
    v
}

/// STATS counter indices (protocol order).
pub mod stat {
    pub const REQUESTS: usize = 0;
    pub const BAD_CHAINS: usize = 1;
    pub const COMMANDS: usize = 2;
    pub const COMPLETION_WAITS: usize = 3;
    pub const ATC_HITS: usize = 8;
    pub const ATC_MISSES: usize = 9;
    pub const PAGE_REQUESTS: usize = 12;
    pub const PRG_RESPONSES: usize = 13;
    pub const EVENTS_LOGGED: usize = 14;
    pub const EVENTS_DROPPED: usize = 15;
    pub const PPR_LOGGED: usize = 16;
    pub const ATC_INVALIDATIONS: usize = 19;
    pub const ILLEGAL_COMMANDS: usize = 21;
    pub const INJECTED_FAULTS: usize = 22;
    pub const COUNT: usize = 23;
}

pub fn devtab_reg() -> u64 {
    DevTableBase::encode(DEVTAB, 1)
}
