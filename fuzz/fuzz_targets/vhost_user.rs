//! A vhost-user message sequence against the daemon in this process: one
//! daemon for the fuzzing run, a connection per input. The input is sent
//! as the frontend's byte stream, a 1 MiB memfd attached to the first
//! bytes (so a SET_MEM_TABLE has a file); then the frontend stops writing
//! and waits for the daemon to close. The daemon must survive every input.
#![no_main]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vhost_device_amdvi::{start_backend, DaemonConfig, Options, StopSignal};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

struct Daemon {
    sock: PathBuf,
    thread: JoinHandle<()>,
}

fn daemon() -> &'static Daemon {
    static D: OnceLock<Daemon> = OnceLock::new();
    D.get_or_init(|| {
        let sock = std::env::temp_dir().join(format!("amdvi-fuzz-{}.sock", std::process::id()));
        let mut cfg = DaemonConfig::default();
        cfg.handshake_timeout = Duration::from_millis(200);
        cfg.iommu.pri_timeout = Duration::from_millis(1);
        let s = sock.clone();
        let thread = std::thread::spawn(move || {
            let stop = StopSignal::new().unwrap();
            let r = start_backend(&cfg, &s, &Options::default(), &stop);
            panic!("the daemon stopped: {r:?}");
        });
        let end = Instant::now() + Duration::from_secs(5);
        while !sock.exists() {
            assert!(Instant::now() < end, "daemon did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        Daemon { sock, thread }
    })
}

fn memfd() -> OwnedFd {
    // SAFETY: memfd_create with a valid NUL-terminated name; checked below.
    let fd = unsafe { libc::memfd_create(c"amdvi-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our memfd.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 1 << 20) }, 0);
    fd
}

/// Threads of this process: the daemon's per-connection threads (vring
/// workers) end shortly after it closes the socket.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fuzz_target!(|data: &[u8]| {
    let d = daemon();
    let before = threads();
    let Ok(mut s) = UnixStream::connect(&d.sock) else {
        return;
    };
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mf = memfd();
    let first = data.len().min(12);
    if first > 0 && s.send_with_fd(&data[..first], mf.as_raw_fd()).is_ok() {
        let _ = std::io::Write::write_all(&mut s, &data[first..]);
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    // Leak detection runs when this input returns: wait until the daemon has
    // torn the connection down, so that what is still allocated is a leak
    // and not a thread that has not yet run its thread-local destructors.
    let end = Instant::now() + Duration::from_secs(5);
    while threads() > before {
        assert!(Instant::now() < end, "a connection's threads outlived it by 5 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!d.thread.is_finished(), "the daemon thread ended");
});
