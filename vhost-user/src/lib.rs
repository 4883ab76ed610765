//! vhost-device-amdvi: the `iommu-dev` model of an AMD IOMMUv2-like unit with
//! ATS endpoints, served to QEMU as a vhost-user device. The guest-facing
//! protocol is `docs/protocol.md`.
//!
//! Layout (as the rust-vmm vhost-device daemons): `config.rs` the TOML file,
//! `virtio_amdvi.rs` the wire structs, `chain.rs` descriptor-chain checks,
//! `amdvi.rs` requests on the model, `request_error.rs` their refusals, `stream.rs` the access engines,
//! `vhu_amdvi.rs` the `VhostUserBackend`, `relay.rs` the checks on the
//! frontend's messages, `sigbus.rs` the guard against guest memory files
//! shrunk under the daemon, `service.rs` the process loop (event-manager),
//! and here the sockets and the counters.

pub mod amdvi;
pub mod chain;
pub mod config;
pub mod relay;
pub mod request_error;
mod service;
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

use vhost::vhost_user::Listener;
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
    #[error("event loop: {0}")]
    Poll(std::io::Error),
    #[error("timerfd: {0}")]
    Timer(vmm_sys_util::errno::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A request to stop the daemon from another thread ([`StopSignal::stop`]).
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

    /// The eventfd; writing 8 bytes to it stops the daemon.
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
    /// Also write `stats_json` this often.
    pub stats_interval: Option<std::time::Duration>,
    /// Stop on SIGINT/SIGTERM, read from a signalfd. The caller must have
    /// blocked both signals in every thread before starting any.
    pub signals: bool,
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

/// Serve connections on `socket` one after another (a new backend each
/// time, so every connection starts from a fresh device) until `stop`
/// fires (or SIGINT/SIGTERM with [`Options::signals`]). Returns the
/// counters summed over all connections. The loop is [`service`]'s.
pub fn start_backend(
    cfg: &DaemonConfig,
    socket: &Path,
    opts: &Options,
    stop: &StopSignal,
) -> Result<Totals> {
    service::run(cfg, socket, opts, stop)
}
