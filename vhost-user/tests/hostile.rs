//! Hostile frontends (issue 11): each test drives the daemon on a real
//! socket with a frontend that misbehaves, then checks that the daemon
//! refused it clearly (or kept the queue usable) and still serves a
//! well-behaved connection.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vhost_device_amdvi::virtio_amdvi as w;
use vhost_device_amdvi::{start_backend, DaemonConfig, Error, Options, StopSignal};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A short handshake deadline, so that the timeout tests are quick.
const FAST: &str = "handshake_timeout_ms = 300\n";

fn logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A memfd of `len` bytes.
fn small_memfd(len: u64) -> File {
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is checked.
    let fd = unsafe { libc::memfd_create(c"amdvi-hostile".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fd is a fresh descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

/// A frontend up to the point where it sends its memory table.
fn handshake(d: &Daemon) -> (Frontend, Watchdog) {
    logs();
    let (mut fe, dog) = frontend(&d.sock);
    fe.set_owner().unwrap();
    let f = fe.get_features().unwrap();
    fe.set_features(f).unwrap();
    fe.get_protocol_features().unwrap();
    fe.set_protocol_features(VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    (fe, dog)
}

/// Whether the daemon ended this connection: the next request fails.
fn ended(fe: &mut Frontend) -> bool {
    fe.get_features().is_err()
}

/// SET_MEM_TABLE with one region of `declared` bytes at `offset` in a file
/// of `file_len` bytes; the daemon must end the connection.
fn mem_table_short_file(d: &Daemon, file_len: u64, offset: u64, declared: usize) {
    let file = small_memfd(file_len.max(declared as u64 + offset));
    // Map the file while it is large enough, then shrink it, so the region
    // info carries a valid address for the declared size.
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        declared,
        Some(FileOffset::new(file.try_clone().unwrap(), offset)),
    )])
    .unwrap();
    file.set_len(file_len).unwrap();
    let (mut fe, _dog) = handshake(d);
    let info = VhostUserMemoryRegionInfo::from_guest_region(mem.iter().next().unwrap()).unwrap();
    let r = fe.set_mem_table(&[info]);
    assert!(
        r.is_err() || ended(&mut fe),
        "a {declared:#x}-byte region at offset {offset:#x} of a {file_len:#x}-byte file was accepted"
    );
}

fn still_serves(d: &Daemon) {
    let mut g = Guest::connect(d);
    assert!(u32::from(g.info().num_endpoints) > 0);
}

/// `info()` with a bounded wait: `None` when the request queue is dead.
fn info_within(g: &mut Guest, t: Duration) -> Option<w::Info> {
    let tk = g.submit(w::req::INFO, &[], 328);
    g.wait_timeout(tk, t).map(|r| r.obj())
}

/// A raw vhost-user request: header (request, flags = version 1, size) and payload.
fn raw(request: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

const SET_OWNER: u32 = 3;
const SET_VRING_KICK: u32 = 12;

/// Whether the daemon closes `s` within `t` (replies are read and dropped).
fn closed_within(s: &mut UnixStream, t: Duration) -> bool {
    let end = Instant::now() + t;
    let mut buf = [0u8; 256];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

// --- finding 1: memory regions and their files ---

#[test]
fn mem_table_region_larger_than_its_file_is_refused() {
    let d = Daemon::start("");
    // A 4 KiB memfd declared as 8 MiB.
    mem_table_short_file(&d, 4096, 0, 8 << 20);
    still_serves(&d);
    // mmap_offset past the end of the file.
    mem_table_short_file(&d, 4096, 8192, 4096);
    still_serves(&d);
}

#[test]
fn memory_file_truncated_after_setup_ends_the_connection_not_the_daemon() {
    logs();
    let d = Daemon::start("");
    let mut g = Guest::connect(&d);
    assert!(info_within(&mut g, Duration::from_secs(10)).is_some());
    // The frontend shrinks its guest memory file to nothing. The test must
    // not touch its own mapping from now on; a kick makes the daemon read
    // the rings, past the end of the file.
    g.memory_file().set_len(0).unwrap();
    g.reqq.kick.write(1).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !ended(&mut g.fe) {
        assert!(
            Instant::now() < end,
            "connection still open after truncation"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    still_serves(&d);
}

// --- finding 3: stalls ---

/// Set up queue `i` of `g` as `Guest::start_queues` does, without SET_VRING_ADDR.
fn queue_without_addr(g: &mut Guest, i: usize) {
    let q = if i == 0 { &g.reqq } else { &g.evq };
    g.fe.set_vring_num(i, q.size).unwrap();
    g.fe.set_vring_base(i, 0).unwrap();
    g.fe.set_vring_call(i, &q.call).unwrap();
    g.fe.set_vring_kick(i, &q.kick).unwrap();
    g.fe.set_vring_enable(i, true).unwrap();
}

#[test]
fn kick_before_set_vring_addr_keeps_the_queue_usable() {
    let d = Daemon::start("");
    logs();
    let mut g = Guest::connect_no_queues(&d.sock, true);
    // Rings placed where the (zero) default addresses are not: a kick now
    // finds no usable ring.
    queue_without_addr(&mut g, 0);
    g.reqq.kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    g.start_queues();
    assert!(
        info_within(&mut g, Duration::from_secs(5)).is_some(),
        "request queue dead after a kick before SET_VRING_ADDR"
    );
}

#[test]
fn avail_index_jump_is_logged_and_the_queue_recovers() {
    let d = Daemon::start("");
    logs();
    let mut g = Guest::connect(&d);
    assert!(info_within(&mut g, Duration::from_secs(5)).is_some());
    let idx_at = GuestAddress(g.reqq.avail + 2);
    let idx: u16 = g.mem.read_obj(idx_at).unwrap();
    g.mem.write_obj(idx.wrapping_add(1000), idx_at).unwrap();
    g.reqq.kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The guest repairs its index; the next request must be served.
    g.mem.write_obj(idx, idx_at).unwrap();
    assert!(
        info_within(&mut g, Duration::from_secs(5)).is_some(),
        "request queue dead after the avail index jumped"
    );
}

#[test]
fn mem_table_without_the_rings_then_restored_keeps_the_queue() {
    let d = Daemon::start("");
    logs();
    let mut g = Guest::connect(&d);
    assert!(info_within(&mut g, Duration::from_secs(5)).is_some());
    // A table with one unrelated region far away from the rings.
    let other = small_memfd(1 << 20);
    let far = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(1 << 32),
        1 << 20,
        Some(FileOffset::new(other, 0)),
    )])
    .unwrap();
    let info = VhostUserMemoryRegionInfo::from_guest_region(far.iter().next().unwrap()).unwrap();
    g.fe.set_mem_table(&[info]).unwrap();
    // A round trip: the library handles messages in order, so the table
    // is in force once this returns (the frontend does not wait for an ack).
    g.fe.get_features().unwrap();
    g.reqq.kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Back to the real table.
    let info = VhostUserMemoryRegionInfo::from_guest_region(g.mem.iter().next().unwrap()).unwrap();
    g.fe.set_mem_table(&[info]).unwrap();
    g.fe.get_features().unwrap();
    assert!(
        info_within(&mut g, Duration::from_secs(5)).is_some(),
        "request queue dead after a memory table without the rings"
    );
}

#[test]
fn polled_kick_is_refused() {
    let d = Daemon::start("");
    logs();
    let mut s = connect_stream(&d.sock);
    s.write_all(&raw(SET_OWNER, &[])).unwrap();
    // Queue 0, bit 8: no file descriptor (polling mode).
    s.write_all(&raw(SET_VRING_KICK, &0x100u64.to_ne_bytes()))
        .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)),
        "a SET_VRING_KICK without an eventfd was accepted"
    );
    still_serves(&d);
}

#[test]
fn queue_size_not_power_of_two_is_refused() {
    let d = Daemon::start("");
    let (mut fe, _dog) = handshake(&d);
    let r = fe.set_vring_num(0, 6);
    assert!(
        r.is_err() || ended(&mut fe),
        "queue size 6 was acknowledged"
    );
    still_serves(&d);
}

#[test]
fn silent_frontend_times_out_and_the_next_is_served() {
    let d = Daemon::start(FAST);
    logs();
    let mut silent = connect_stream(&d.sock);
    let t = Instant::now();
    let mut g = Guest::connect(&d);
    assert!(info_within(&mut g, Duration::from_secs(5)).is_some());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(closed_within(&mut silent, Duration::from_secs(1)));
}

#[test]
fn frontend_stopping_inside_a_header_times_out() {
    let d = Daemon::start(FAST);
    logs();
    let mut s = connect_stream(&d.sock);
    s.write_all(&raw(SET_OWNER, &[])).unwrap();
    // Five bytes of a 12-byte header, then nothing.
    s.write_all(&raw(SET_OWNER, &[])[..5]).unwrap();
    let t = Instant::now();
    let mut g = Guest::connect(&d);
    assert!(info_within(&mut g, Duration::from_secs(5)).is_some());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(closed_within(&mut s, Duration::from_secs(1)));
}

#[test]
fn queue_size_six_does_not_give_a_phantom_completion() {
    // With size 6 refused the frontend cannot get there; the rings the
    // device uses are the ones it was given.
    let d = Daemon::start("");
    let (mut fe, _dog) = handshake(&d);
    assert!(fe.set_vring_num(1, 6).is_err() || ended(&mut fe));
    let mut g = Guest::connect(&d);
    for _ in 0..8 {
        assert!(info_within(&mut g, Duration::from_secs(5)).is_some());
    }
}

// --- finding 4: the socket path, SET_CONFIG ---

fn run_on(path: &std::path::Path) -> vhost_device_amdvi::Result<vhost_device_amdvi::Totals> {
    let stop = StopSignal::new().unwrap();
    stop.stop();
    start_backend(&DaemonConfig::default(), path, &Options::default(), &stop)
}

#[test]
fn regular_file_at_socket_path_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("not-a-socket");
    std::fs::write(&p, "precious").unwrap();
    let r = run_on(&p);
    assert!(matches!(r, Err(Error::NotASocket(_))), "{r:?}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "precious");
}

#[test]
fn second_daemon_on_a_live_socket_is_refused() {
    let d = Daemon::start("");
    still_serves(&d);
    let r = run_on(&d.sock);
    assert!(matches!(r, Err(Error::InUse(_))), "{r:?}");
    // The first daemon still owns its socket.
    still_serves(&d);
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
    assert!(p.exists());
    run_on(&p).expect("a stale socket is replaced");
    assert!(!p.exists(), "the daemon removes its own socket at exit");
}

#[test]
fn set_config_is_refused() {
    let d = Daemon::start("");
    let mut g = Guest::connect(&d);
    let before = g.config();
    let r = g.fe.set_config(
        0,
        vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
        &[0u8; 4],
    );
    assert!(
        r.is_err() || ended(&mut g.fe),
        "SET_CONFIG on the read-only config space was acknowledged"
    );
    drop(g);
    let mut g = Guest::connect(&d);
    assert_eq!(g.config(), before);
}

#[test]
fn rings_inside_memory_are_still_served_after_a_kick_storm() {
    // Many kicks with nothing posted must not disturb a healthy queue.
    let d = Daemon::start("");
    let mut g = Guest::connect(&d);
    for _ in 0..100 {
        g.reqq.kick.write(1).unwrap();
    }
    assert!(info_within(&mut g, Duration::from_secs(5)).is_some());
}
