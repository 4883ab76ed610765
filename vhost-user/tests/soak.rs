//! Resource use over many connections (issue 11): descriptors and memory
//! must end where they started. The daemon runs in this process, so the
//! process's own counts are the daemon's (the tests of this file run one
//! at a time: they share the counts).

mod common;

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Wait until the daemon has finished `n` connections (its stats file).
fn wait_connections(d: &Daemon, n: u64) {
    let p = d.dir.path().join("stats.json");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let done = std::fs::read_to_string(&p)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["connections"].as_u64())
            .unwrap_or(0);
        if done >= n {
            // The test side's watchdog threads end just after their guests.
            std::thread::sleep(Duration::from_millis(50));
            return;
        }
        assert!(Instant::now() < end, "{done} of {n} connections finished");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn good(d: &Daemon) {
    let mut g = Guest::connect(d);
    let t = g.submit(vhost_device_amdvi::virtio_amdvi::req::INFO, &[], 328);
    assert!(g.wait_timeout(t, Duration::from_secs(10)).is_some());
}

/// One of several hostile frontends, by `kind`.
fn hostile(d: &Daemon, kind: usize) {
    let raw = |req: u32, payload: &[u8]| {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        m.extend_from_slice(payload);
        m
    };
    let mut s = connect_stream(&d.sock);
    match kind {
        // Connects and leaves.
        0 => {}
        // Half a header, then leaves.
        1 => {
            let _ = s.write_all(&raw(3, &[])[..5]);
        }
        // A polled kick.
        2 => {
            let _ = s.write_all(&raw(3, &[]));
            let _ = s.write_all(&raw(12, &0x100u64.to_ne_bytes()));
        }
        // Queue size 6.
        3 => {
            let _ = s.write_all(&raw(3, &[]));
            let mut p = 0u32.to_ne_bytes().to_vec();
            p.extend_from_slice(&6u32.to_ne_bytes());
            let _ = s.write_all(&raw(8, &p));
        }
        // A request code that does not exist.
        _ => {
            let _ = s.write_all(&raw(3, &[]));
            let _ = s.write_all(&raw(0xdead, &[]));
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Wait for the daemon to close.
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 64];
    while matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0) {}
}

#[test]
fn connections_do_not_leak_descriptors() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("");
    for _ in 0..3 {
        good(&d);
    }
    wait_connections(&d, 3);
    let before = fd_count();
    for i in 0..40 {
        if i % 2 == 0 {
            good(&d);
        } else {
            hostile(&d, i / 2);
        }
    }
    wait_connections(&d, 43);
    let after = fd_count();
    assert!(
        after <= before,
        "{before} descriptors before 40 connections, {after} after"
    );
}

/// `SOAK_CONNECTIONS` (default 10000) connections, one in five well
/// behaved, the others hostile in turn. Prints descriptor and RSS figures.
/// Run with `cargo test --release -p vhost-device-amdvi --test soak -- --ignored --nocapture`.
#[test]
#[ignore = "long: run by hand (see the doc comment)"]
fn soak_many_connections() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let n: u64 = std::env::var("SOAK_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let d = Daemon::start("handshake_timeout_ms = 500\n");
    for _ in 0..20 {
        good(&d);
    }
    wait_connections(&d, 20);
    let (fd0, rss0) = (fd_count(), rss_kib());
    let t = Instant::now();
    for i in 0..n {
        if i % 5 == 0 {
            good(&d);
        } else {
            hostile(&d, (i % 5) as usize - 1 + (i / 5 % 2) as usize);
        }
        if (i + 1) % 1000 == 0 {
            eprintln!(
                "soak: {} connections, {} fds, RSS {} KiB, {:.1} s",
                i + 1,
                fd_count(),
                rss_kib(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    wait_connections(&d, 20 + n);
    let (fd1, rss1) = (fd_count(), rss_kib());
    eprintln!(
        "soak: {n} connections in {:.1} s: descriptors {fd0} -> {fd1}, RSS {rss0} KiB -> {rss1} KiB",
        t.elapsed().as_secs_f64()
    );
    assert!(fd1 <= fd0, "descriptors {fd0} -> {fd1}");
    assert!(
        rss1 < rss0 + 16 * 1024,
        "RSS grew by {} KiB",
        rss1.saturating_sub(rss0)
    );
}
