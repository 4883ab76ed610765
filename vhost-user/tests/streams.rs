//! Device streams (STREAM_START/STOP): a stream running while
//! invalidations arrive, its limits and bad parameters, and a follow
//! stream going where the PASID maps.

mod common;

use std::time::Duration;

use common::*;
use vhost_device_amdvi::virtio_amdvi::{self as w, ep, req, Status};
use vm_memory::ByteValued;

/// Any non-zero word in the page at `pa`.
fn page_written(g: &Guest, pa: u64) -> bool {
    (0..512).any(|i| g.read_u64(pa + 8 * i) != 0)
}

#[test]
fn stream_runs_while_invalidations_arrive() {
    let (_d, mut g) = ready("max_streams = 2\n");
    let va = 0x7000_0000u64;
    let pas = g.map_range(va, 4);
    let r = g.request(
        req::STREAM_START,
        stream(EP0, va, 0x4000, [2, 1, 1], ep::F_NO_PRI).as_slice(),
        8,
    );
    ok(&r);
    let id = r.obj::<w::StreamStartResp>().stream_id.to_native();
    // Invalidations and COMPLETION_WAITs keep flowing while it runs.
    for i in 1..=30u64 {
        let r = g.commands(&flush_cmds(EP0, 1, Some((STORE_AREA, i))));
        ok(&r);
        assert_eq!(g.read_u64(STORE_AREA), i);
    }
    let r = stop_stream(&mut g, id, w::STREAM_STOP_F_REPORT);
    ok(&r);
    let c: w::StreamCounts = r.obj();
    assert_eq!(c.running.to_native(), 1);
    std::thread::sleep(Duration::from_millis(20));
    let r = stop_stream(&mut g, id, 0);
    ok(&r);
    let c: w::StreamCounts = r.obj();
    assert_eq!(c.running.to_native(), 0);
    let (rd, wr, tr) = (
        c.reads.to_native(),
        c.writes.to_native(),
        c.translations.to_native(),
    );
    assert!(rd > 0 && wr > 0 && tr > 0, "{c:?}");
    assert_eq!(c.faults.to_native(), 0, "{c:?}");
    assert_eq!(c.errors.to_native(), 0, "{c:?}");
    assert!(
        c.atc_misses.to_native() > 0 && c.atc_hits.to_native() > 0,
        "{c:?}"
    );
    assert!(c.elapsed_us.to_native() > 0);
    // Written values are write_value + n.
    let first = g.read_u64(pas[0]);
    assert!(first >= 0x1000 && first < 0x1000 + wr, "{first:#x}");
    // No stale translation was ever used: the tables never changed.
    let o = w::OracleRead {
        max_records: 0.into(),
        flags: 0.into(),
    };
    let r = g.request(req::ORACLE_READ, o.as_slice(), 72);
    ok(&r);
    assert!(r
        .obj::<w::OracleResp>()
        .count
        .iter()
        .all(|c| c.to_native() == 0));
    // Released: gone.
    assert_eq!(stop_stream(&mut g, id, 0).status, Some(Status::OutOfRange));
    assert_eq!(stop_stream(&mut g, id, 1).status, Some(Status::OutOfRange));
}

#[test]
fn stream_limits_and_bad_parameters() {
    let (_d, mut g) = ready("max_streams = 2\n");
    let va = 0x7000_0000u64;
    g.map_range(va, 1);
    let start = |g: &mut Guest, s: w::StreamStart| g.request(req::STREAM_START, s.as_slice(), 8);
    let good = stream(EP0, va, 0x1000, [1, 0, 0], 0);
    let bad = [
        w::StreamStart {
            va: (va + 4).into(),
            ..good
        },
        w::StreamStart {
            len: 4.into(),
            ..good
        },
        w::StreamStart {
            stride: 12.into(),
            ..good
        },
        w::StreamStart {
            stride: 0.into(),
            ..good
        },
        w::StreamStart {
            read_weight: 0,
            ..good
        },
        w::StreamStart {
            flags: 0x80,
            ..good
        },
        w::StreamStart { mode: 2, ..good },
    ];
    for s in bad {
        assert_eq!(start(&mut g, s).status, Some(Status::BadRequest), "{s:?}");
    }
    assert_eq!(
        start(
            &mut g,
            w::StreamStart {
                pasid: (1 << 16).into(),
                ..good
            }
        )
        .status,
        Some(Status::OutOfRange)
    );
    assert_eq!(
        start(
            &mut g,
            w::StreamStart {
                devid: 0x33.into(),
                ..good
            }
        )
        .status,
        Some(Status::OutOfRange)
    );
    // A throttled stream with a duration ends by itself; its counts stay readable.
    let s = w::StreamStart {
        rate: 1000.into(),
        duration_ms: 50.into(),
        ..good
    };
    let r = start(&mut g, s);
    ok(&r);
    let a = r.obj::<w::StreamStartResp>().stream_id.to_native();
    let r = start(&mut g, good);
    ok(&r);
    let b = r.obj::<w::StreamStartResp>().stream_id.to_native();
    assert_ne!(a, b);
    assert_eq!(start(&mut g, good).status, Some(Status::NoResource));
    std::thread::sleep(Duration::from_millis(150));
    let c: w::StreamCounts = stop_stream(&mut g, a, 1).obj();
    assert_eq!(c.running.to_native(), 0, "duration over");
    let n = c.reads.to_native();
    // Throttled: at most about 50 accesses at 1000/s in 50 ms (fewer on a loaded machine).
    assert!((1..=80).contains(&n), "{n} accesses");
    // Releasing one frees a slot.
    ok(&stop_stream(&mut g, a, 0));
    ok(&start(&mut g, good));
    assert_eq!(stop_stream(&mut g, b, 2).status, Some(Status::BadRequest));
    assert_eq!(stop_stream(&mut g, 999, 0).status, Some(Status::OutOfRange));
}

#[test]
fn stream_follow_goes_where_the_pasid_maps() {
    let (_d, mut g) = ready("max_streams = 2\n");
    let (va, va2) = (0x7000_0000u64, 0x9000_0000u64);
    let near = g.map_range(va, 3);
    let far = g.map_range(va2, 2);
    let follow = |va: u64, len: u64| w::StreamStart {
        mode: w::STREAM_MODE_FOLLOW,
        stride: 0.into(),
        ..stream(EP0, va, len, [0, 1, 0], ep::F_NO_PRI)
    };
    let run = |g: &mut Guest, s: w::StreamStart| {
        let r = g.request(req::STREAM_START, s.as_slice(), 8);
        ok(&r);
        let id = r.obj::<w::StreamStartResp>().stream_id.to_native();
        std::thread::sleep(Duration::from_millis(100));
        let r = stop_stream(g, id, 0);
        ok(&r);
        r.obj::<w::StreamCounts>()
    };
    // A window: only the leaves overlapping [va2, va2 + 8 KiB) are used.
    let c = run(&mut g, follow(va2, 0x2000));
    assert!(c.writes.to_native() > 0, "{c:?}");
    assert_eq!(c.faults.to_native(), 0, "{c:?}");
    assert!(far.iter().all(|&pa| page_written(&g, pa)));
    assert!(near.iter().all(|&pa| !page_written(&g, pa)));
    // len 0: everything mapped, and nothing else (no faults).
    let c = run(&mut g, follow(0, 0));
    assert_eq!(c.faults.to_native(), 0, "{c:?}");
    assert!(near.iter().all(|&pa| page_written(&g, pa)));
    // Other modes are refused; a range stream still needs a stride.
    let bad = w::StreamStart {
        mode: 2,
        ..follow(0, 0)
    };
    let r = g.request(req::STREAM_START, bad.as_slice(), 8);
    assert_eq!(r.status, Some(Status::BadRequest));
    let bad = w::StreamStart {
        mode: w::STREAM_MODE_RANGE,
        ..follow(va, 0x1000)
    };
    let r = g.request(req::STREAM_START, bad.as_slice(), 8);
    assert_eq!(r.status, Some(Status::BadRequest));
}
