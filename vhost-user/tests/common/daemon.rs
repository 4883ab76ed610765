//! The daemon as a thread of the test process, and the socket a test
//! frontend connects through (with a watchdog, so that a hung connection
//! fails its test instead of hanging it).

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::Frontend;
use vhost_device_amdvi::virtio_amdvi as w;
use vhost_device_amdvi::{start_backend, DaemonConfig, Options, StopSignal, Totals};

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
