//! The vhost-user glue: virtio features, config space, the request queue
//! (commands inline, endpoint work on worker threads) and the event queue
//! fed from the model's event and PPR logs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use iommu_dev::{Log, Mem};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{
    ByteValued, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic,
    GuestMemoryLoadGuard,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::amdvi::{Device, Outcome, Response};
use crate::chain::{self, Parsed};
use crate::config::DaemonConfig;
use crate::sigbus;
use crate::virtio_amdvi::{self as w, Status};

/// Epoll id of the log-notification eventfd on the event queue's thread
/// (ids up to the number of queues are the library's).
pub const LOG_EVENT: u64 = w::NUM_QUEUES as u64 + 1;
/// Worker threads for endpoint work at most; more requests wait their turn.
const MAX_WORKERS: usize = 256;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads that run endpoint accesses and stream joins. A request never
/// waits behind a blocked one while fewer than `MAX_WORKERS` are busy.
#[derive(Debug)]
struct WorkerPool {
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    idle: Arc<AtomicUsize>,
    pending: Arc<(Mutex<usize>, Condvar)>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl WorkerPool {
    fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        WorkerPool {
            tx: Mutex::new(Some(tx)),
            rx,
            idle: Arc::new(AtomicUsize::new(0)),
            pending: Arc::new((Mutex::new(0), Condvar::new())),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn submit(&self, job: Job) {
        let Some(tx) = self.tx.lock().unwrap().clone() else {
            return;
        };
        *self.pending.0.lock().unwrap() += 1;
        // Claim an idle worker, or start one.
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |i| i.checked_sub(1))
            .is_ok();
        if !claimed {
            let mut threads = self.threads.lock().unwrap();
            if threads.len() < MAX_WORKERS {
                let (rx, idle, pending) =
                    (self.rx.clone(), self.idle.clone(), self.pending.clone());
                let n = threads.len();
                match std::thread::Builder::new()
                    .name(format!("amdvi-ep-{n}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job();
                            let (m, cv) = &*pending;
                            *m.lock().unwrap() -= 1;
                            cv.notify_all();
                            idle.fetch_add(1, Ordering::AcqRel);
                        }
                    }) {
                    Ok(t) => threads.push(t),
                    Err(e) => log::error!("cannot start a worker thread: {e}"),
                }
            }
        }
        let _ = tx.send(job);
    }

    /// Wait until no job is queued or running (or `timeout` passed).
    fn wait_idle(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.pending;
        let g = m.lock().unwrap();
        let (g, _) = cv.wait_timeout_while(g, timeout, |n| *n > 0).unwrap();
        *g == 0
    }

    fn shutdown(&self) {
        self.tx.lock().unwrap().take();
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// The vhost-user backend of one connection.
pub struct VhostUserAmdviBackend {
    dev: Arc<Device>,
    mem: RwLock<GuestMemoryAtomic<Mem>>,
    event_idx: AtomicBool,
    exit: Arc<ExitEvents>,
    log_event: Arc<EventFd>,
    pool: WorkerPool,
    /// Per queue: the last event ended in an error (logged once).
    queue_failed: [AtomicBool; 2],
    /// Tag of this connection's regions in the SIGBUS registry.
    owner: usize,
    /// Written when a region's file was truncated under the daemon.
    shrunk: EventFd,
}

const QUEUE_NAMES: [&str; 2] = ["request", "event"];

/// Tags for [`sigbus::register`]; 0 means a free slot.
static NEXT_OWNER: AtomicUsize = AtomicUsize::new(1);

/// The exit events of the library's vring worker threads, one pair per
/// thread, made once and lent to every connection's backend.
///
/// vhost-user-backend 0.24 takes the consumer [`VhostUserBackend::exit_event`]
/// returns with `into_raw_fd()` in `VringEpollHandler::new` and never closes
/// it: a fresh pair per connection leaked two eventfds each time. These
/// pairs stay owned here; the library gets an alias of the consumer that it
/// never closes, and [`ExitEvents::rearm`] empties the counters between
/// connections (the library does not read them). Cargo.toml pins the crate
/// to 0.24.0 for this reason; `tests/hostile.rs` counts descriptors over
/// many connections.
#[derive(Debug)]
pub struct ExitEvents {
    pairs: Vec<(EventConsumer, EventNotifier)>,
}

impl ExitEvents {
    pub fn new() -> io::Result<Self> {
        let pairs = (0..2)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ExitEvents { pairs })
    }

    /// Empty the counters (after a connection's worker threads are joined).
    pub fn rearm(&self) {
        for (c, _) in &self.pairs {
            let _ = c.consume();
        }
    }

    fn lend(&self, thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.pairs.get(thread)?;
        // SAFETY: the alias is handed to vhost-user-backend 0.24, which only
        // calls `into_raw_fd()` on it and never closes the descriptor (see
        // the type's comment); `self` keeps owning and finally closes it, and
        // outlives the library's epoll handlers (they hold the backend,
        // which holds `self`).
        let alias = unsafe { EventConsumer::from_raw_fd(c.as_raw_fd()) };
        Some((alias, n.try_clone().ok()?))
    }
}

impl std::fmt::Debug for VhostUserAmdviBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserAmdviBackend")
            .field("dev", &self.dev)
            .finish()
    }
}

fn io_err<E: std::fmt::Debug>(e: E) -> io::Error {
    io::Error::other(format!("{e:?}"))
}

impl VhostUserAmdviBackend {
    pub fn new(cfg: &DaemonConfig) -> io::Result<Self> {
        Self::with_exit_events(cfg, Arc::new(ExitEvents::new()?))
    }

    /// As [`VhostUserAmdviBackend::new`], lending `exit` to the library
    /// (one [`ExitEvents`] serves all the connections of a process).
    pub fn with_exit_events(cfg: &DaemonConfig, exit: Arc<ExitEvents>) -> io::Result<Self> {
        Self::with_parts(cfg, exit, GuestMemoryAtomic::new(Mem::default()))
    }

    /// As [`VhostUserAmdviBackend::with_exit_events`], with the guest memory
    /// the library will fill (pass the same atomic to `VhostUserDaemon::new`:
    /// the library, the backend and the model then share one).
    pub fn with_parts(
        cfg: &DaemonConfig,
        exit: Arc<ExitEvents>,
        mem: GuestMemoryAtomic<Mem>,
    ) -> io::Result<Self> {
        let dev = Arc::new(Device::new(cfg, mem.clone()));
        let log_event = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        for log in [dev.iommu().event_log(), dev.iommu().ppr_log()] {
            let ev = log_event.clone();
            log.set_notify(Some(Arc::new(move || {
                let _ = ev.write(1);
            })));
        }
        Ok(VhostUserAmdviBackend {
            dev,
            mem: RwLock::new(mem),
            event_idx: AtomicBool::new(false),
            exit,
            log_event,
            pool: WorkerPool::new(),
            queue_failed: [AtomicBool::new(false), AtomicBool::new(false)],
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            shrunk: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// The eventfd to register with [`LOG_EVENT`] on the event queue's thread (1).
    pub fn log_event(&self) -> &EventFd {
        &self.log_event
    }

    /// Reset the emulated unit: streams stopped, pending accesses answered,
    /// the model back to its power-on state.
    pub fn reset(&self) {
        self.dev.streams().signal_all();
        // Wakes accesses waiting for a page-request answer.
        self.dev.iommu().reset();
        self.dev.streams().stop_all();
        if !self.pool.wait_idle(Duration::from_secs(10)) {
            log::warn!("endpoint work still running after reset");
        }
        self.dev.iommu().reset();
    }

    /// End of the connection: reset, then stop the worker threads.
    pub fn shutdown(&self) {
        self.reset();
        self.pool.shutdown();
        for log in [self.dev.iommu().event_log(), self.dev.iommu().ppr_log()] {
            log.set_notify(None);
        }
    }

    /// The eventfd that becomes readable when the frontend shrank a memory
    /// region's file under the daemon.
    pub fn shrunk_event(&self) -> &EventFd {
        &self.shrunk
    }

    /// Forget this connection's regions in the SIGBUS registry (before its
    /// memory is unmapped).
    pub fn unregister_memory(&self) {
        sigbus::unregister(self.owner);
    }

    fn memory(&self) -> GuestMemoryLoadGuard<Mem> {
        self.mem.read().unwrap().memory()
    }

    /// Drain the request queue (thread 0).
    fn process_requests(&self, vring: &VringRwLock) -> io::Result<()> {
        let mem = self.memory();
        check_queue(vring, &mem)?;
        loop {
            vring.disable_notification().map_err(io_err)?;
            let chains: Vec<_> = vring
                .get_mut()
                .get_queue_mut()
                .iter(mem.clone())
                .map_err(io_err)?
                .collect();
            let mut used = false;
            for c in chains {
                let p = chain::parse(&mem, c);
                used |= self.handle_chain(p, vring, &mem);
            }
            if used && vring.needs_notification().map_err(io_err)? {
                vring.signal_used_queue()?;
            }
            if !vring.enable_notification().map_err(io_err)? {
                break;
            }
        }
        Ok(())
    }

    /// One request. Returns whether it was completed here (used entry added).
    fn handle_chain(&self, p: Parsed, vring: &VringRwLock, mem: &Mem) -> bool {
        let room = p.writable_len();
        let complete = |len: u32| {
            if let Err(e) = vring.add_used(p.head, len) {
                log::warn!("cannot return request {}: {e:?}", p.head);
            }
            true
        };
        if let Some(e) = p.error {
            log::debug!("malformed request chain {}: {e}", p.head);
            return if room >= size_of::<w::RespHdr>() {
                let r = Response::status(Status::BadRequest).to_bytes();
                complete(chain::write_response(mem, &p.writable, &r))
            } else {
                self.dev.count_bad_chain();
                complete(0)
            };
        }
        if room < size_of::<w::RespHdr>() {
            log::debug!("request chain {} has no room for a status", p.head);
            self.dev.count_bad_chain();
            return complete(0);
        }
        match self
            .dev
            .handle(&p.readable, &|off| p.readable_gpa(off), room)
        {
            Outcome::Done(r) => complete(chain::write_response(mem, &p.writable, &r.to_bytes())),
            Outcome::Deferred(work) => {
                let vring = vring.clone();
                let mem = self.mem.read().unwrap().memory().into_inner();
                self.pool.submit(Box::new(move || {
                    // A bug in the model must not take the worker (and the
                    // reset that waits for it) down with it.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                        .unwrap_or_else(|_| {
                            log::error!("endpoint work panicked");
                            Response::status(Status::DeviceError)
                        });
                    let len = chain::write_response(&mem, &p.writable, &r.to_bytes());
                    if let Err(e) = vring.add_used(p.head, len) {
                        log::warn!("cannot return request {}: {e:?}", p.head);
                        return;
                    }
                    if vring.needs_notification().unwrap_or(true) {
                        let _ = vring.signal_used_queue();
                    }
                }));
                false
            }
        }
    }

    /// Move log entries into posted event buffers (thread 1).
    fn process_events(&self, vring: &VringRwLock) -> io::Result<()> {
        {
            let st = vring.get_ref();
            if !st.get_queue().ready() || !st.is_enabled() {
                return Ok(());
            }
        }
        let mem = self.memory();
        check_queue(vring, &mem)?;
        loop {
            vring.disable_notification().map_err(io_err)?;
            let (used, empty) = self.fill_events(vring, &mem);
            if used && vring.needs_notification().map_err(io_err)? {
                vring.signal_used_queue()?;
            }
            let more_buffers = vring.enable_notification().map_err(io_err)?;
            if empty || !more_buffers {
                break;
            }
        }
        Ok(())
    }

    /// Fill buffers while entries wait. Returns (buffers used, logs empty).
    fn fill_events(&self, vring: &VringRwLock, mem: &GuestMemoryLoadGuard<Mem>) -> (bool, bool) {
        let iommu = self.dev.iommu();
        let (events, pprs): (&Log, &Log) = (iommu.event_log(), iommu.ppr_log());
        let mut used = false;
        while !(events.is_empty() && pprs.is_empty()) {
            let Some(c) = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone())
            else {
                return (used, false);
            };
            used = true;
            let p = chain::parse(mem, c);
            let n = p.writable_len() / 24;
            if p.error.is_some() || !p.readable_segs.is_empty() || n == 0 {
                log::debug!("event buffer {} unusable: {:?}", p.head, p.error);
                if p.error.is_some() || !p.readable_segs.is_empty() {
                    self.dev.count_bad_chain();
                }
                let _ = vring.add_used(p.head, 0);
                continue;
            }
            let mut recs = Vec::with_capacity(n);
            for r in pprs.take(n) {
                recs.push((w::EVREC_PPR, r));
            }
            for r in events.take(n - recs.len()) {
                recs.push((w::EVREC_EVENT, r));
            }
            let mut bytes = Vec::with_capacity(recs.len() * 24);
            for (kind, r) in &recs {
                let rec = w::EventRec {
                    kind: (*kind).into(),
                    reserved: 0.into(),
                    dropped: r.dropped_before.into(),
                    entry: r.entry,
                };
                bytes.extend_from_slice(rec.as_slice());
            }
            let len = chain::write_response(mem, &p.writable, &bytes);
            let _ = vring.add_used(p.head, len);
        }
        (used, true)
    }
}

/// Refuse to touch a ring that is not laid out inside guest memory (a kick
/// before SET_VRING_ADDR, or a memory table that no longer covers it).
fn check_queue(vring: &VringRwLock, mem: &Mem) -> io::Result<()> {
    let st = vring.get_ref();
    let q = st.get_queue();
    let n = u64::from(q.size());
    // (address, bytes, alignment) of the descriptor table and both rings.
    let areas = [
        (q.desc_table(), 16 * n, 16),
        (q.avail_ring(), 6 + 2 * n, 2),
        (q.used_ring(), 6 + 8 * n, 4),
    ];
    let inside = areas.iter().all(|&(a, len, align)| {
        a % align == 0
            && mem.check_range(
                GuestAddress(a),
                len as usize,
                vm_memory::Permissions::ReadWrite,
            )
    });
    if !q.ready() || !inside {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "ring (size {}, descriptors {:#x}, avail {:#x}, used {:#x}) is not inside guest memory",
                q.size(),
                q.desc_table(),
                q.avail_ring(),
                q.used_ring()
            ),
        ));
    }
    Ok(())
}

impl VhostUserBackend for VhostUserAmdviBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        w::NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        w::MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut cfg = [0u8; w::CONFIG_SIZE];
        cfg[..4].copy_from_slice(&w::CONFIG_MAGIC.to_le_bytes());
        cfg[4..].copy_from_slice(&w::CONFIG_VERSION.to_le_bytes());
        let (o, s) = (offset as usize, size as usize);
        match o.checked_add(s) {
            Some(end) if end <= cfg.len() => cfg[o..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // The library acknowledged and ignored this before: refuse it
        // (a NACK when REPLY_ACK is on; the library then ends the connection).
        log::error!(
            "SET_CONFIG refused: {} bytes at offset {offset}: the config space is read-only",
            buf.len()
        );
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the config space is read-only",
        ))
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        // The relay checked each region against its file before the
        // library mapped it; a later truncation is caught by the SIGBUS
        // handler, which needs the regions registered first.
        if let Err(e) = sigbus::register(self.owner, &mem.memory(), self.shrunk.as_raw_fd()) {
            log::error!("memory table refused: {e}");
            return Err(e);
        }
        *self.mem.write().unwrap() = mem.clone();
        self.dev.set_memory(mem);
        Ok(())
    }

    fn reset_device(&self) {
        log::info!("device reset");
        self.reset();
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // Linux resets the device (status 0) and QEMU stops the rings: the
        // request queue stopping is the reset of the emulated unit.
        if queue_index == u32::from(w::REQUEST_QUEUE) {
            log::info!("request queue stopped: resetting the IOMMU");
            self.reset();
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // Requests on one thread, events on another: event delivery never
        // waits behind a long COMMANDS batch.
        vec![1 << w::REQUEST_QUEUE, 1 << w::EVENT_QUEUE]
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.lend(thread_index)
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if !evset.contains(EventSet::IN) {
            log::debug!("event {device_event} with event set {evset:?}");
        }
        let started = Instant::now();
        // An error returned here would end the library's vring worker and
        // the queue with it, silently: log it and keep the queue, which
        // works again once the frontend repairs it and kicks.
        let r = match (thread_id, u64::from(device_event)) {
            (0, 0) => self.process_requests(&vrings[0]),
            (1, 0) => self.process_events(&vrings[0]),
            (1, LOG_EVENT) => {
                let _ = self.log_event.read();
                self.process_events(&vrings[0])
            }
            other => {
                log::warn!("unexpected event {other:?}");
                Ok(())
            }
        };
        let queue = thread_id.min(1);
        match r {
            Ok(()) => self.queue_failed[queue].store(false, Ordering::Relaxed),
            Err(e) if !self.queue_failed[queue].swap(true, Ordering::Relaxed) => {
                log::error!(
                    "{} queue unusable: {e} (waiting for the frontend to repair it)",
                    QUEUE_NAMES[queue]
                )
            }
            Err(e) => log::debug!("{} queue still unusable: {e}", QUEUE_NAMES[queue]),
        }
        log::trace!(
            "event {device_event} on thread {thread_id}: {:?}",
            started.elapsed()
        );
        Ok(())
    }
}
