//! One request round trip through the daemon over the real vhost-user
//! socket: the frontend (this process) writes a chain, kicks, and waits for
//! the used entry and call. The daemon runs as a thread of this process.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use vhost_device_amdvi::virtio_amdvi::{req, Status};

fn roundtrip(c: &mut Criterion) {
    let d = Daemon::start("");
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    let va = 0x4000_0000u64;
    g.map_range(va, 1);
    assert_eq!(g.read(EP0, va, 8).status, Some(Status::Ok));

    let mut grp = c.benchmark_group("roundtrip");
    grp.sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    grp.bench_function("stats", |b| {
        b.iter(|| black_box(g.request(req::STATS, &[], 8 + 8 * 32)))
    });
    grp.bench_function("endpoint_read_8_atc_hit", |b| {
        b.iter(|| {
            let r = g.read(EP0, va, 8);
            debug_assert_eq!(r.status, Some(Status::Ok));
            black_box(r)
        })
    });
    grp.bench_function("commands_flush_and_completion_wait", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            black_box(g.commands(&flush_cmds(EP0, 1, Some((STORE_AREA, n)))))
        })
    });
    grp.finish();
    drop(g);
    d.stop();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
