//! vhost-device-amdvi: the `iommu-dev` model of an AMD IOMMUv2-like unit with
//! ATS endpoints, served to QEMU as a vhost-user device. The guest-facing
//! protocol is `docs/protocol.md`.
//!
//! Layout (as the rust-vmm vhost-device daemons): `config.rs` the TOML file,
//! `virtio_amdvi.rs` the wire structs, `chain.rs` descriptor-chain checks,
//! `amdvi.rs` requests on the model, `stream.rs` the access engines,
//! `vhu_amdvi.rs` the `VhostUserBackend`, and here the per-connection loop.

pub mod amdvi;
pub mod chain;
pub mod config;
pub mod stream;
pub mod trace;
pub mod vhu_amdvi;
pub mod virtio_amdvi;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use iommu_dev::Tracer;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub use config::{ConfigError, DaemonConfig};
pub use trace::JsonTracer;
pub use vhu_amdvi::VhostUserAmdviBackend;

/// Errors of the daemon process (configuration errors are [`ConfigError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {0}: {1}")]
    Listen(PathBuf, vhost::vhost_user::Error),
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

/// Serve connections on `socket` one after another (a new backend and
/// daemon each time, so every connection starts from a fresh device) until
/// `stop` fires. Returns the counters summed over all connections.
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
    let mut listener = Listener::new(socket, true).map_err(|e| Error::Listen(socket.into(), e))?;
    log::info!("listening on {}", socket.display());

    // The watcher turns the stop signal into a connection shutdown and a
    // wake-up of the accept wait.
    let stopping = Arc::new(AtomicBool::new(false));
    let current: Arc<Mutex<Option<ShutdownHandle>>> = Arc::new(Mutex::new(None));
    let wake = EventFd::new(0).map_err(Error::Backend)?;
    let watcher = {
        let (stopping, current) = (stopping.clone(), current.clone());
        let wake = wake.try_clone().map_err(Error::Backend)?;
        let stop = stop.try_clone().map_err(Error::Backend)?;
        std::thread::Builder::new()
            .name("amdvi-stop".into())
            .spawn(move || {
                let _ = stop.fd.read();
                stopping.store(true, Ordering::Release);
                if let Some(h) = current.lock().unwrap().as_ref() {
                    h.shutdown();
                }
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
            if wait_readable(&[listener.as_raw_fd(), wake.as_raw_fd()])? == 1
                || stopping.load(Ordering::Acquire)
            {
                return Ok(());
            }
            let backend = Arc::new(VhostUserAmdviBackend::new(cfg).map_err(Error::Backend)?);
            if let Some(t) = &tracer {
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
            daemon.start(&mut listener).map_err(Error::Daemon)?;
            log::info!("frontend connected");
            let handlers = daemon.get_epoll_handlers();
            handlers[1]
                .register_listener(
                    backend.log_event().as_raw_fd(),
                    EventSet::IN,
                    vhu_amdvi::LOG_EVENT,
                )
                .map_err(Error::Listener)?;
            *current.lock().unwrap() = daemon.shutdown_handle();
            if stopping.load(Ordering::Acquire) {
                daemon.request_shutdown();
            }
            let r = daemon.wait();
            *current.lock().unwrap() = None;
            backend.shutdown();
            for h in &handlers {
                h.send_exit_event();
            }
            drop(handlers);
            drop(daemon);
            totals.add(backend.device());
            if let Some(t) = &tracer {
                t.flush();
            }
            match r {
                Ok(())
                | Err(vhost_user_backend::Error::HandleRequest(
                    vhost::vhost_user::Error::Disconnected
                    | vhost::vhost_user::Error::PartialMessage,
                )) => log::info!("frontend disconnected"),
                Err(e) => log::warn!("connection ended: {e}"),
            }
        }
    })();
    stopping.store(true, Ordering::Release);
    stop.stop();
    let _ = watcher.join();
    if let Some(t) = &tracer {
        t.flush();
    }
    if let Some(p) = &opts.stats_json {
        totals.write(p)?;
    }
    result.map(|()| totals)
}
