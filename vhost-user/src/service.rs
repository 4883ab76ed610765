//! The process loop: one `event-manager` `EventManager` with three
//! subscribers, all on the daemon's main thread.
//!
//! - [`Server`]: the listening socket, and while a frontend is served, its
//!   connection (the frontend's socket, the library's end of the private
//!   socket, the backend's "memory file shrunk" eventfd and the handshake
//!   deadline, a `TimerFd`). The listening socket is not watched while a
//!   connection is served: frontends wait in the backlog.
//! - [`Stopper`]: SIGINT/SIGTERM through a signalfd (when the caller blocked
//!   them, as the binary does) and the [`StopSignal`] eventfd.
//! - [`StatsTimer`]: a periodic `TimerFd` writing `--stats-json`.
//!
//! Vring kicks stay with vhost-user-backend's worker threads; its request
//! handler runs on its own thread behind the private socket. A message from
//! the frontend is read whole on the main thread, so a message that starts
//! and stalls holds the loop for at most the handshake timeout.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use iommu_dev::{Mem, Tracer};
use vhost_user_backend::{VhostUserDaemon, VringEpollHandler};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::relay::{self, Inbound, Refusal};
use crate::{
    vhu_amdvi, virtio_amdvi, DaemonConfig, Error, ExitEvents, JsonTracer, Options, PrivateSocket,
    PublicSocket, Result, StopSignal, Totals, VhostUserAmdviBackend,
};

type Sub = Rc<RefCell<dyn MutEventSubscriber>>;
type Backend = Arc<VhostUserAmdviBackend>;

// Event data of the Server's sources.
const LISTEN: u32 = 1;
const FRONT: u32 = 2;
const LIB: u32 = 3;
const SHRUNK: u32 = 4;
const DEADLINE: u32 = 5;

/// One frontend being served.
struct Connection {
    backend: Backend,
    daemon: VhostUserDaemon<Backend>,
    handlers: Vec<Arc<VringEpollHandler<Backend>>>,
    front: UnixStream,
    lib: UnixStream,
    inbound: Inbound,
    deadline: TimerFd,
}

struct Server {
    cfg: DaemonConfig,
    tracer: Option<Arc<JsonTracer>>,
    public: PublicSocket,
    private: PrivateSocket,
    exit: Arc<ExitEvents>,
    totals: Rc<RefCell<Totals>>,
    stats: Option<PathBuf>,
    /// An error that stops the daemon (the loop checks after each round).
    fatal: Rc<RefCell<Option<Error>>>,
    conn: Option<Connection>,
}

fn listen_events(s: &PublicSocket) -> Events {
    Events::with_data(&s.listener, LISTEN, EventSet::IN)
}

impl Server {
    fn fail(&self, e: Error) {
        self.fatal.borrow_mut().get_or_insert(e);
    }

    fn write_stats(&self) {
        if let Some(p) = &self.stats {
            if let Err(e) = self.totals.borrow().write(p) {
                self.fail(e);
            }
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let front = match self.public.listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                // Do not spin on a persistent error (EMFILE).
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        };
        match self.connect(front) {
            Ok(c) => {
                let reg = [
                    Events::with_data(&c.front, FRONT, EventSet::IN),
                    Events::with_data(&c.lib, LIB, EventSet::IN),
                    Events::with_data(c.backend.shrunk_event(), SHRUNK, EventSet::IN),
                    Events::with_data(&c.deadline, DEADLINE, EventSet::IN),
                ];
                self.conn = Some(c);
                let _ = ops.remove(listen_events(&self.public));
                for ev in reg {
                    if let Err(e) = ops.add(ev) {
                        log::error!("cannot watch the connection: {e}");
                        self.end(ops, Some(Refusal::Io(std::io::Error::other(e.to_string()))));
                        return;
                    }
                }
                log::info!("frontend connected");
            }
            Err(e) => log::error!("cannot serve a frontend: {e}"),
        }
    }

    /// A backend and a library daemon for `front`, with one guest memory
    /// (a `GuestMemoryAtomic`) shared by the library, the backend and the model.
    fn connect(&mut self, front: UnixStream) -> Result<Connection> {
        let mem = GuestMemoryAtomic::new(Mem::default());
        let backend = Arc::new(
            VhostUserAmdviBackend::with_parts(&self.cfg, self.exit.clone(), mem.clone())
                .map_err(Error::Backend)?,
        );
        if let Some(t) = &self.tracer {
            backend
                .device()
                .iommu()
                .set_tracer(Some(t.clone() as Arc<dyn Tracer>));
        }
        let mut daemon = VhostUserDaemon::new("vhost-device-amdvi".into(), backend.clone(), mem)
            .map_err(Error::Daemon)?;
        // Our end of the private socket; the library accepts the other.
        let lib = UnixStream::connect(&self.private.path).map_err(Error::Private)?;
        daemon
            .start(&mut self.private.listener)
            .map_err(Error::Daemon)?;
        let handlers = daemon.get_epoll_handlers();
        handlers[1]
            .register_listener(
                backend.log_event().as_raw_fd(),
                EventSet::IN,
                vhu_amdvi::LOG_EVENT,
            )
            .map_err(Error::Listener)?;
        let timeout = self.cfg.handshake_timeout;
        for s in [&front, &lib] {
            s.set_write_timeout(Some(timeout)).map_err(Error::Backend)?;
        }
        let mut deadline = TimerFd::new().map_err(Error::Timer)?;
        deadline.reset(timeout, None).map_err(Error::Timer)?;
        Ok(Connection {
            backend,
            daemon,
            handlers,
            front,
            lib,
            inbound: Inbound::new(relay::Limits {
                timeout,
                max_queue_size: virtio_amdvi::MAX_QUEUE_SIZE as u16,
            }),
            deadline,
        })
    }

    /// End the connection (`why`: the daemon's reason, `None` when a side
    /// closed), log it, count it and listen again.
    fn end(&mut self, ops: &mut EventOps, why: Option<Refusal>) {
        let Some(c) = self.conn.take() else { return };
        let _ = ops.remove(Events::empty(&c.front));
        let _ = ops.remove(Events::empty(&c.lib));
        let _ = ops.remove(Events::empty(c.backend.shrunk_event()));
        let _ = ops.remove(Events::empty(&c.deadline));
        let Connection {
            backend,
            mut daemon,
            handlers,
            front,
            lib,
            ..
        } = c;
        // Either side ending ends both: the library sees its socket close.
        let _ = lib.shutdown(std::net::Shutdown::Both);
        let _ = front.shutdown(std::net::Shutdown::Both);
        let r = daemon.wait();
        backend.shutdown();
        for h in &handlers {
            h.send_exit_event();
        }
        drop(handlers);
        // Joins the library's vring worker threads.
        drop(daemon);
        self.exit.rearm();
        // Nothing touches guest memory any more; it is unmapped with `backend`.
        backend.unregister_memory();
        self.totals.borrow_mut().add(backend.device());
        drop(backend);
        if let Some(t) = &self.tracer {
            t.flush();
        }
        match (why, r) {
            (Some(Refusal::Stopping), _) => {
                log::info!("connection closed: the daemon is stopping")
            }
            (Some(e), _) => log::error!("connection ended: {e}"),
            (
                None,
                Ok(())
                | Err(vhost_user_backend::Error::HandleRequest(
                    vhost::vhost_user::Error::Disconnected
                    | vhost::vhost_user::Error::PartialMessage,
                )),
            ) => log::info!("frontend disconnected"),
            (None, Err(e)) => log::error!("connection ended: {e}"),
        }
        self.write_stats();
        if let Err(e) = ops.add(listen_events(&self.public)) {
            self.fail(Error::Listen(
                self.public.path.clone(),
                std::io::Error::other(e.to_string()),
            ));
        }
    }
}

impl MutEventSubscriber for Server {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(listen_events(&self.public)) {
            self.fail(Error::Listen(
                self.public.path.clone(),
                std::io::Error::other(e.to_string()),
            ));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == LISTEN {
            return self.accept(ops);
        }
        let Some(c) = self.conn.as_mut() else { return };
        let why = match events.data() {
            FRONT => match c.inbound.pump(&c.front, &mut c.lib) {
                Ok(true) => return,
                Ok(false) => None,
                Err(e) => Some(e),
            },
            LIB => match relay::pump_replies(&mut c.lib, &mut c.front) {
                Ok(true) => return,
                Ok(false) => None,
                Err(e) => Some(Refusal::Replies(e)),
            },
            SHRUNK => Some(Refusal::MemoryShrunk),
            DEADLINE => {
                let _ = c.deadline.wait();
                if c.inbound.owned() {
                    return;
                }
                Some(Refusal::Handshake(self.cfg.handshake_timeout))
            }
            _ => return,
        };
        self.end(ops, why);
    }
}

/// SIGINT/SIGTERM (signalfd) and the stop eventfd.
struct Stopper {
    signals: Option<OwnedFd>,
    stop: StopSignal,
    stopping: Rc<Cell<bool>>,
}

impl MutEventSubscriber for Stopper {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.stop.fd, EventSet::IN));
        if let Some(s) = &self.signals {
            let _ = ops.add(Events::new(s, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(s) = self
            .signals
            .as_ref()
            .filter(|s| s.as_raw_fd() == events.fd())
        {
            let mut info = [0u8; size_of::<libc::signalfd_siginfo>()];
            // SAFETY: reading into a buffer of the size of one siginfo record.
            let n = unsafe { libc::read(s.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            if n == info.len() as isize {
                let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                log::info!("signal {signo}: stopping");
            }
        } else {
            let _ = self.stop.fd.read();
        }
        self.stopping.set(true);
    }
}

/// A signalfd for SIGINT and SIGTERM. The caller must have blocked both in
/// every thread (the binary does so first thing in `main`).
fn signal_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: a zeroed sigset_t is initialised by sigemptyset before use;
    // signalfd gets a valid mask and returns a new descriptor or -1.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Writes the statistics file every `--stats-interval-ms`.
struct StatsTimer {
    timer: TimerFd,
    path: PathBuf,
    totals: Rc<RefCell<Totals>>,
    fatal: Rc<RefCell<Option<Error>>>,
}

impl MutEventSubscriber for StatsTimer {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        if let Err(e) = self.totals.borrow().write(&self.path) {
            self.fatal.borrow_mut().get_or_insert(e);
        }
    }
}

fn manager_err(e: event_manager::Error) -> Error {
    Error::Poll(std::io::Error::other(e.to_string()))
}

/// See [`crate::start_backend`].
pub(crate) fn run(
    cfg: &DaemonConfig,
    socket: &std::path::Path,
    opts: &Options,
    stop: &StopSignal,
) -> Result<Totals> {
    let tracer = match &opts.trace {
        Some(p) => Some(Arc::new(
            JsonTracer::create(p).map_err(|e| Error::Trace(p.clone(), e))?,
        )),
        None => None,
    };
    let signals = if opts.signals {
        Some(signal_fd().map_err(Error::Backend)?)
    } else {
        None
    };
    let public = PublicSocket::bind(socket)?;
    log::info!("listening on {}", socket.display());
    let totals = Rc::new(RefCell::new(Totals::default()));
    let fatal = Rc::new(RefCell::new(None));
    let stopping = Rc::new(Cell::new(false));
    let server = Rc::new(RefCell::new(Server {
        cfg: cfg.clone(),
        tracer: tracer.clone(),
        public,
        private: PrivateSocket::new().map_err(Error::Private)?,
        exit: Arc::new(ExitEvents::new().map_err(Error::Backend)?),
        totals: totals.clone(),
        stats: opts.stats_json.clone(),
        fatal: fatal.clone(),
        conn: None,
    }));
    server.borrow().write_stats();

    let mut em = EventManager::<Sub>::new().map_err(manager_err)?;
    let server_id = em.add_subscriber(server.clone());
    em.add_subscriber(Rc::new(RefCell::new(Stopper {
        signals,
        stop: stop.try_clone().map_err(Error::Backend)?,
        stopping: stopping.clone(),
    })));
    if let (Some(path), Some(every)) = (&opts.stats_json, opts.stats_interval) {
        let mut timer = TimerFd::new().map_err(Error::Timer)?;
        timer.reset(every, Some(every)).map_err(Error::Timer)?;
        em.add_subscriber(Rc::new(RefCell::new(StatsTimer {
            timer,
            path: path.clone(),
            totals: totals.clone(),
            fatal: fatal.clone(),
        })));
    }

    let mut result = Ok(());
    while !stopping.get() {
        if let Err(e) = em.run() {
            result = Err(manager_err(e));
            break;
        }
        if let Some(e) = fatal.borrow_mut().take() {
            result = Err(e);
            break;
        }
    }
    if server.borrow().conn.is_some() {
        let mut ops = em.event_ops(server_id).map_err(manager_err)?;
        server.borrow_mut().end(&mut ops, Some(Refusal::Stopping));
    }
    if let Some(t) = &tracer {
        t.flush();
    }
    server.borrow().write_stats();
    if let Some(e) = fatal.borrow_mut().take() {
        result = result.and(Err(e));
    }
    let t = totals.borrow().clone();
    result.map(|()| t)
}
