//! vhost-device-amdvi: the `iommu-dev` model of an AMD IOMMUv2-like unit with
//! ATS endpoints, served to QEMU as a vhost-user device. The guest-facing
//! protocol is `docs/protocol.md`.
//!
//! Layout (as the rust-vmm vhost-device daemons): `config.rs` the TOML file,
//! `virtio_amdvi.rs` the wire structs, `chain.rs` descriptor-chain checks,
//! `amdvi.rs` requests on the model, `stream.rs` the access engines,
//! `vhu_amdvi.rs` the `VhostUserBackend`, `relay.rs` the checks on the
//! frontend's messages, `sigbus.rs` the guard against guest memory files
//! shrunk under the daemon, and here the listening socket and the
//! per-connection loop.

pub mod amdvi;
pub mod chain;
pub mod config;
pub mod relay;
pub mod sigbus;
pub mod stream;
pub mod trace;
pub mod vhu_amdvi;
pub mod virtio_amdvi;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use iommu_dev::Tracer;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub use config::{ConfigError, DaemonConfig};
pub use trace::JsonTracer;
pub use vhu_amdvi::{ExitEvents, VhostUserAmdviBackend};

/// Errors of the daemon process (configuration errors are [`ConfigError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {0}: {1}")]
    Listen(PathBuf, std::io::Error),
    #[error("{0} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{0}: another daemon is listening on this socket")]
    InUse(PathBuf),
    #[error("cannot set up the private socket to vhost-user-backend: {0}")]
    Private(std::io::Error),
    #[error("cannot create the backend: {0}")]
    Backend(std::io::Error),
    #[error("vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    #[error("cannot register the log eventfd: {0}")]
    Listener(std::io::Error),
    #[error("cannot create {0}: {1}")]
    Trace(PathBuf, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Stats(PathBuf, std::io::Error),
    #[error("poll: {0}")]
    Poll(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A request to stop the daemon, usable from a signal handler (write the
/// eventfd) or another thread ([`StopSignal::stop`]).
#[derive(Debug)]
pub struct StopSignal {
    fd: EventFd,
}

impl StopSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(StopSignal {
            fd: EventFd::new(0)?,
        })
    }

    pub fn stop(&self) {
        let _ = self.fd.write(1);
    }

    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(StopSignal {
            fd: self.fd.try_clone()?,
        })
    }

    /// The eventfd; writing 8 bytes to it stops the daemon (async-signal-safe).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// What the daemon does besides serving.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Counters (summed over connections) written here after each connection and at exit.
    pub stats_json: Option<PathBuf>,
    /// JSON lines of the model's trace events.
    pub trace: Option<PathBuf>,
}

/// Counters summed over the connections served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub accesses: u64,
    pub counters: BTreeMap<&'static str, u64>,
    /// Counter names in protocol order.
    pub order: Vec<&'static str>,
}

impl Totals {
    fn add(&mut self, dev: &amdvi::Device) {
        self.connections += 1;
        self.accesses += dev.accesses();
        let c = dev.counters();
        self.order = c.iter().map(|(n, _)| *n).collect();
        for (n, v) in c {
            *self.counters.entry(n).or_default() += v;
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut counters = serde_json::Map::new();
        for n in &self.order {
            counters.insert((*n).to_string(), self.counters[n].into());
        }
        serde_json::json!({
            "daemon": "vhost-device-amdvi",
            "connections": self.connections,
            "accesses": self.accesses,
            "counters": counters,
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default() + "\n";
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::Stats(path.to_path_buf(), e))
    }
}

/// Wait until one of `fds` is readable; returns its index.
fn wait_readable(fds: &[i32]) -> Result<usize> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs for
        // the duration of the call.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Poll(e));
        }
        if let Some(i) = pfds.iter().position(|p| p.revents != 0) {
            return Ok(i);
        }
    }
}

/// The listening socket at the user's path.
///
/// An existing path is replaced only when it is a socket nobody listens on
/// (a stale one from a daemon that died): a regular file or anything else
/// is an error, and so is a socket that accepts a connection (a live
/// daemon; taking its path over would strand it and its frontend). The
/// check and the bind are not atomic: two daemons started at the same
/// instant on one path can still race.
#[derive(Debug)]
pub struct PublicSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket we bound, so that only our own is
    /// removed at exit.
    id: (u64, u64),
}

impl PublicSocket {
    pub fn bind(path: &Path) -> Result<Self> {
        let listen = |e| Error::Listen(path.to_path_buf(), e);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(Error::InUse(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    log::info!("removing the stale socket {}", path.display());
                    std::fs::remove_file(path).map_err(listen)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(listen(e)),
            },
            Ok(_) => return Err(Error::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen(e)),
        }
        let listener = UnixListener::bind(path).map_err(listen)?;
        let m = std::fs::symlink_metadata(path).map_err(listen)?;
        Ok(PublicSocket {
            listener,
            path: path.to_path_buf(),
            id: (m.dev(), m.ino()),
        })
    }
}

impl Drop for PublicSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.id)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The socket vhost-user-backend listens on, in a directory only this user
/// can enter; the daemon connects to it once per frontend and relays.
struct PrivateSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: Listener,
}

impl PrivateSocket {
    fn new() -> std::io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let template = base.join("vhost-device-amdvi.XXXXXX");
        let mut raw = std::ffi::CString::new(template.into_os_string().into_encoded_bytes())
            .map_err(std::io::Error::other)?
            .into_bytes_with_nul();
        // SAFETY: `raw` is a writable NUL-terminated template; mkdtemp
        // replaces the Xs in place and creates the directory with mode 0700.
        let p = unsafe { libc::mkdtemp(raw.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        raw.pop();
        let dir = PathBuf::from(std::ffi::OsString::from(
            String::from_utf8(raw).map_err(std::io::Error::other)?,
        ));
        let path = dir.join("backend.sock");
        let listener = match UnixListener::bind(&path) {
            Ok(l) => Listener::from(l),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        Ok(PrivateSocket {
            dir,
            path,
            listener,
        })
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// What the per-connection code needs from the process.
struct Shared<'a> {
    cfg: &'a DaemonConfig,
    tracer: Option<Arc<JsonTracer>>,
    private: PrivateSocket,
    exit: Arc<ExitEvents>,
    /// Readable once the daemon is stopping.
    wake: EventFd,
}

/// Serve connections on `socket` one after another (a new backend each
/// time, so every connection starts from a fresh device) until `stop`
/// fires. Returns the counters summed over all connections.
pub fn start_backend(
    cfg: &DaemonConfig,
    socket: &Path,
    opts: &Options,
    stop: &StopSignal,
) -> Result<Totals> {
    let tracer = match &opts.trace {
        Some(p) => Some(Arc::new(
            JsonTracer::create(p).map_err(|e| Error::Trace(p.clone(), e))?,
        )),
        None => None,
    };
    let public = PublicSocket::bind(socket)?;
    log::info!("listening on {}", socket.display());
    let mut shared = Shared {
        cfg,
        tracer,
        private: PrivateSocket::new().map_err(Error::Private)?,
        exit: Arc::new(ExitEvents::new().map_err(Error::Backend)?),
        wake: EventFd::new(0).map_err(Error::Backend)?,
    };

    // The watcher turns the stop signal into a wake-up of the accept wait
    // and of the relay (the eventfd stays readable).
    let stopping = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stopping = stopping.clone();
        let wake = shared.wake.try_clone().map_err(Error::Backend)?;
        let stop = stop.try_clone().map_err(Error::Backend)?;
        std::thread::Builder::new()
            .name("amdvi-stop".into())
            .spawn(move || {
                let _ = stop.fd.read();
                stopping.store(true, Ordering::Release);
                let _ = wake.write(1);
            })
            .map_err(Error::Backend)?
    };

    let mut totals = Totals::default();
    let result = (|| -> Result<()> {
        loop {
            if let Some(p) = &opts.stats_json {
                totals.write(p)?;
            }
            if wait_readable(&[public.listener.as_raw_fd(), shared.wake.as_raw_fd()])? == 1
                || stopping.load(Ordering::Acquire)
            {
                return Ok(());
            }
            let front = match public.listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("accept: {e}");
                    continue;
                }
            };
            serve(&mut shared, front, &mut totals)?;
        }
    })();
    stopping.store(true, Ordering::Release);
    stop.stop();
    let _ = watcher.join();
    if let Some(t) = &shared.tracer {
        t.flush();
    }
    if let Some(p) = &opts.stats_json {
        totals.write(p)?;
    }
    result.map(|()| totals)
}

/// One frontend, from accept to the end of its connection. Errors are only
/// those that stop the daemon; a connection's own problems are logged.
fn serve(sh: &mut Shared, front: UnixStream, totals: &mut Totals) -> Result<()> {
    let backend = Arc::new(
        VhostUserAmdviBackend::with_exit_events(sh.cfg, sh.exit.clone()).map_err(Error::Backend)?,
    );
    if let Some(t) = &sh.tracer {
        backend
            .device()
            .iommu()
            .set_tracer(Some(t.clone() as Arc<dyn Tracer>));
    }
    let mut daemon = VhostUserDaemon::new(
        "vhost-device-amdvi".into(),
        backend.clone(),
        GuestMemoryAtomic::new(iommu_dev::Mem::default()),
    )
    .map_err(Error::Daemon)?;
    // Our end of the private socket; the library accepts the other.
    let mut lib = UnixStream::connect(&sh.private.path).map_err(Error::Private)?;
    daemon
        .start(&mut sh.private.listener)
        .map_err(Error::Daemon)?;
    log::info!("frontend connected");
    let handlers = daemon.get_epoll_handlers();
    handlers[1]
        .register_listener(
            backend.log_event().as_raw_fd(),
            EventSet::IN,
            vhu_amdvi::LOG_EVENT,
        )
        .map_err(Error::Listener)?;

    let outbound = {
        let (lib2, front2) = (
            lib.try_clone().map_err(Error::Backend)?,
            front.try_clone().map_err(Error::Backend)?,
        );
        std::thread::Builder::new()
            .name("amdvi-replies".into())
            .spawn(move || relay::outbound(lib2, front2))
            .map_err(Error::Backend)?
    };
    let limits = relay::Limits {
        timeout: sh.cfg.handshake_timeout,
        max_queue_size: virtio_amdvi::MAX_QUEUE_SIZE as u16,
    };
    let refused = relay::inbound(
        &front,
        &mut lib,
        limits,
        backend.shrunk_event().as_raw_fd(),
        sh.wake.as_raw_fd(),
    );
    // Either side ending ends both: the library sees its socket close.
    let _ = lib.shutdown(std::net::Shutdown::Both);
    let _ = front.shutdown(std::net::Shutdown::Both);
    let r = daemon.wait();
    let _ = outbound.join();
    backend.shutdown();
    for h in &handlers {
        h.send_exit_event();
    }
    drop(handlers);
    // Joins the library's vring worker threads.
    drop(daemon);
    sh.exit.rearm();
    // Nothing touches guest memory any more; it is unmapped with `backend`.
    backend.unregister_memory();
    totals.add(backend.device());
    if let Some(t) = &sh.tracer {
        t.flush();
    }
    match (refused, r) {
        (Err(relay::Refusal::Stopping), _) => {
            log::info!("connection closed: the daemon is stopping")
        }
        (Err(e), _) => log::error!("connection ended: {e}"),
        (
            Ok(()),
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )),
        ) => log::info!("frontend disconnected"),
        (Ok(()), Err(e)) => log::error!("connection ended: {e}"),
    }
    Ok(())
}
