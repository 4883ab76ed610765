//! The binary: arguments, configuration errors (one line, exit 2), signals
//! (clean exit with statistics written).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vhost_device_amdvi::virtio_amdvi::Status;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-device-amdvi");

/// Run the binary to completion; (exit code, stderr).
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line_exit_2(args: &[&str], must_contain: &[&str]) {
    let (code, err) = run(args);
    assert_eq!(code, 2, "exit code for {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    for m in must_contain {
        assert!(err.contains(m), "{err:?} should mention {m:?}");
    }
}

#[test]
fn help_reads_like_a_vhost_device_daemon() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let h = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--socket-path",
        "-s,",
        "--config",
        "--stats-json",
        "--trace",
        "-v",
    ] {
        assert!(h.contains(opt), "{opt} in --help:\n{h}");
    }
}

#[test]
fn bad_arguments() {
    one_line_exit_2(&[], &["--socket-path"]);
    one_line_exit_2(&["-s", "/tmp/x.sock", "--frobnicate"], &["--frobnicate"]);
    one_line_exit_2(&["-s"], &["--socket-path"]);
    one_line_exit_2(&["-s", "/tmp/x.sock", "--config"], &["--config"]);
    one_line_exit_2(&["-s", "/tmp/x.sock", "-c", "x.toml"], &["-c"]);
    one_line_exit_2(
        &["-s", "/tmp/x.sock", "-s", "/tmp/y.sock"],
        &["more than once"],
    );
    one_line_exit_2(
        &["-s", "/tmp/x.sock", "--stats-interval-ms", "5"],
        &["--stats-json"],
    );
    one_line_exit_2(
        &[
            "-s",
            "/tmp/x.sock",
            "--stats-json",
            "/tmp/x.json",
            "--stats-interval-ms",
            "0",
        ],
        &["--stats-interval-ms", "'0'"],
    );
}

fn bad_config(text: &str, key: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, text).unwrap();
    let sock = dir.path().join("s.sock");
    let fs = f.display().to_string();
    one_line_exit_2(
        &["-s", sock.to_str().unwrap(), "--config", &fs],
        &[&fs, &format!(": {key}: "), reason],
    );
    assert!(!sock.exists(), "no socket for a bad configuration");
}

#[test]
fn bad_config_files() {
    bad_config("atc_entries = \"lots\"\n", "atc_entries", "invalid type");
    bad_config("oracle = true\ncolour = 3\n", "colour", "unknown field");
    bad_config("endpoints = []\n", "endpoints", "1 to 16");
    bad_config("pri_timeout_ms = 0\n", "pri_timeout_ms", "at least 1");
    bad_config(
        "[[fault]]\npoint = \"atc_invalidate\"\naction = \"sometimes\"\n",
        "fault[0].action",
        "unknown action",
    );
    bad_config(
        "[[fault]]\npoint = \"cache\"\naction = \"drop\"\n",
        "fault[0].point",
        "unknown fault point",
    );
    bad_config("max_streams = [\n", "max_streams", "");
    bad_config(
        "[[fault]]\npoint = \"walk_read\"\naction = \"drop\"\n[[fault]]\naction = \"drop\"\n",
        "fault[1].point",
        "missing field",
    );
    bad_config(
        "endpoints = [0x10]\n[[fault]]\npoint = \"walk_read\"\naction = \"drop\"\ndevid = 0x99\n",
        "fault[0].devid",
        "0x0099 is not an endpoint",
    );
    let (code, err) = run(&["-s", "/tmp/x.sock", "--config", "/nonexistent/amdvi.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/amdvi.toml") && err.contains("cannot read"),
        "{err}"
    );
    assert!(!err.contains(": -:"), "no key placeholder: {err}");
}

#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for f in ["default.toml", "broken-atc.toml"] {
        let c = vhost_device_amdvi::DaemonConfig::from_file(&root.join(f)).unwrap();
        assert_eq!(c.iommu.endpoints, vec![0x10, 0x11], "{f}");
        assert_eq!(c.iommu.pri_timeout, Duration::from_millis(2000), "{f}");
    }
    let d = vhost_device_amdvi::DaemonConfig::from_file(&root.join("default.toml")).unwrap();
    assert_eq!(
        d,
        vhost_device_amdvi::DaemonConfig::default(),
        "default.toml is the built-in default"
    );
    let b = vhost_device_amdvi::DaemonConfig::from_file(&root.join("broken-atc.toml")).unwrap();
    assert_eq!(b.faults.len(), 1);
    assert_eq!(b.faults[0].point, iommu_dev::FaultPoint::AtcInvalidate);
    assert_eq!(b.faults[0].action, iommu_dev::FaultAction::Drop);
}

fn wait_for(path: &Path) {
    let end = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < end, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm_after_serving(sig: i32) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("amdvi.sock");
    let stats = dir.path().join("stats.json");
    let trace = dir.path().join("trace.jsonl");
    let mut child = Command::new(BIN)
        .args(["--socket-path", sock.to_str().unwrap()])
        .args(["--stats-json", stats.to_str().unwrap()])
        .args(["--trace", trace.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&sock);
    {
        let mut g = Guest::connect_path(&sock, true);
        g.setup_iommu();
        let va = 0x4000_0000u64;
        g.map_range(va, 1);
        assert_eq!(g.read(EP0, va, 8).status, Some(Status::Ok));
        assert_eq!(
            g.commands(&flush_cmds(EP0, 1, Some((STORE_AREA, 1))))
                .status,
            Some(Status::Ok)
        );
        // Still connected when the signal arrives.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let end = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < end,
                "daemon did not exit after signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0), "clean exit after signal {sig}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(v["connections"], 1);
    assert!(v["counters"]["requests"].as_u64().unwrap() == 3, "{v}");
    assert_eq!(v["counters"]["completion_waits"], 1);
    assert_eq!(v["accesses"], 1);
    let t = std::fs::read_to_string(&trace).unwrap();
    let evs: Vec<serde_json::Value> = t
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for kind in [
        "command",
        "walk",
        "ats_request",
        "atc_invalidate",
        "iotlb_invalidate",
    ] {
        assert!(evs.iter().any(|e| e["ev"] == kind), "{kind} traced");
    }
    assert!(!sock.exists(), "socket removed at exit");
}

#[test]
fn sigterm_ends_cleanly_with_stats() {
    sigterm_after_serving(libc::SIGTERM);
}

#[test]
fn sigint_ends_cleanly_with_stats() {
    sigterm_after_serving(libc::SIGINT);
}

#[test]
fn stats_interval_rewrites_the_stats_file() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("amdvi.sock");
    let stats = dir.path().join("stats.json");
    let mut child = Command::new(BIN)
        .args(["--socket-path", sock.to_str().unwrap()])
        .args(["--stats-json", stats.to_str().unwrap()])
        .args(["--stats-interval-ms", "100"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock);
    wait_for(&stats);
    // No connection, no signal: only the timer writes the file again.
    std::fs::remove_file(&stats).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while !stats.exists() {
        assert!(
            Instant::now() < end,
            "stats file not rewritten by the timer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!sock.exists(), "socket removed at exit");
}
