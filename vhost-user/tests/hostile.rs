//! Hostile frontends (issue 11): each test drives the daemon on a real
//! socket with a frontend that misbehaves, then checks that the daemon
//! refused it clearly and still serves a well-behaved connection.

mod common;

use std::fs::File;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use common::*;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vhost_device_amdvi::virtio_amdvi as w;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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
fn handshake(d: &Daemon) -> Frontend {
    let end = Instant::now() + Duration::from_secs(5);
    let mut fe = loop {
        match Frontend::connect(&d.sock, w::NUM_QUEUES as u64) {
            Ok(f) => break f,
            Err(e) if Instant::now() >= end => panic!("cannot connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    fe.set_owner().unwrap();
    let f = fe.get_features().unwrap();
    fe.set_features(f).unwrap();
    fe.get_protocol_features().unwrap();
    fe.set_protocol_features(VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    fe
}

/// SET_MEM_TABLE with one region of `declared` bytes at `offset` in a file
/// of `file_len` bytes.
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
    let mut fe = handshake(d);
    let info = VhostUserMemoryRegionInfo::from_guest_region(mem.iter().next().unwrap()).unwrap();
    let r = fe.set_mem_table(&[info]);
    assert!(
        r.is_err(),
        "a {declared:#x}-byte region at offset {offset:#x} of a {file_len:#x}-byte file was accepted"
    );
}

fn still_serves(d: &Daemon) {
    let mut g = Guest::connect(d);
    assert!(u32::from(g.info().num_endpoints) > 0);
}

#[test]
fn mem_table_region_larger_than_its_file_is_refused() {
    let d = Daemon::start("");
    mem_table_short_file(&d, 4096, 0, 8 << 20);
    still_serves(&d);
    mem_table_short_file(&d, 4096, 8192, 4096);
    still_serves(&d);
}
