//! Benchmarks with targets from the iommu-dev issue: hot 4-/5-level walks
//! (against the `x86_64` crate translating the same tables), IOTLB and ATC
//! hits, 4 KiB and 64 KiB DMA through the ATC (against a plain memcpy), and
//! single-page invalidation with 64 / 4,096 / 65,536 cached entries.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use iommu_dev::mem;
use iommu_dev::walker::{self, AdUpdate, Dirty, Perms, Start};
use iommu_dev::{AccessFlags, Command, SRange};
use vm_memory::{GuestAddress, GuestMemoryBackend};

mod common;
use common::{entry, iommu, tables, PA, RD, TAG, VA};

/// Keep a result alive without moving it: the whole value is produced
/// (the compiler cannot drop any of it) but not copied into criterion's
/// output, a copy no caller of the model makes.
fn in_place<T>(r: &T) -> &T {
    black_box(r)
}

fn walks(c: &mut Criterion) {
    let mut g = c.benchmark_group("walk");
    for levels in [4u8, 5] {
        let m = mem::anon(0x100_0000);
        let cr3 = tables(&m, levels);
        // Hot: A bits already set, so the walk only reads.
        walker::walk(&m, cr3, levels, VA, RD, AdUpdate::Update(Dirty::OnWrite)).unwrap();
        // The memory view stays warm across walks, as a hardware walker's
        // path to memory does.
        let mut words = mem::Words::new(&m);
        let top = Start {
            level: levels,
            table: cr3,
            perms: Perms::ALL,
        };
        let upd = AdUpdate::Update(Dirty::OnWrite);
        // The translation is looked at where the walk left it, as the
        // model's callers do (`in_place`).
        g.bench_function(format!("hot_{levels}level"), |b| {
            b.iter(|| {
                in_place(&walker::walk_words(
                    &mut words,
                    top,
                    levels,
                    black_box(VA),
                    RD,
                    upd,
                ))
                .is_ok()
            })
        });
        if levels == 4 {
            // The form of earlier runs: unwrap() moves the translation out
            // into criterion's output, a copy of its 80 (formerly 136)
            // bytes right after the walk wrote them.
            g.bench_function("hot_4level_copied_out", |b| {
                b.iter(|| walker::walk_words(&mut words, top, 4, black_box(VA), RD, upd).unwrap())
            });
        }
    }
    // Peer: the x86_64 crate translating the same 4-level tables.
    {
        use x86_64::structures::paging::{OffsetPageTable, PageTable, Translate};
        use x86_64::VirtAddr;
        let m = mem::anon(0x100_0000);
        let cr3 = tables(&m, 4);
        let host = m.get_host_address(GuestAddress(0)).unwrap() as u64;
        // SAFETY: valid 4-level tables entirely inside `m`, mapped at `host`
        // for the whole benchmark; only read through `translate_addr`.
        let pt = unsafe {
            OffsetPageTable::new(&mut *((host + cr3) as *mut PageTable), VirtAddr::new(host))
        };
        assert_eq!(pt.translate_addr(VirtAddr::new(VA)).unwrap().as_u64(), PA);
        g.bench_function("peer_x86_64_crate_4level", |b| {
            b.iter(|| pt.translate_addr(black_box(VirtAddr::new(VA))).unwrap())
        });
    }
    g.finish();
}

fn hits(c: &mut Criterion) {
    let mut g = c.benchmark_group("hit");
    let iotlb = std::sync::Mutex::new(common::iotlb(4096));
    g.bench_function("iotlb", |b| {
        b.iter(|| in_place(&iotlb.lock().unwrap().lookup(TAG, black_box(VA + 0x5123))).is_some())
    });
    let atc = std::sync::Mutex::new(common::atc());
    g.bench_function("atc", |b| {
        b.iter(|| in_place(&atc.lock().unwrap().lookup(1, black_box(VA + 0x5123))).is_some())
    });
    g.finish();
}

fn dma(c: &mut Criterion) {
    let (iommu, m) = iommu();
    let flags = AccessFlags::NO_PRI;
    // A device thread's port: the memory map is looked up once, not per access.
    let mut port = iommu.port();
    for (name, len) in [("dma_4k", 4096usize), ("dma_64k", 65536)] {
        let mut g = c.benchmark_group(name);
        let mut buf = vec![0u8; len];
        port.dma_read(0x10, 1, VA, flags, &mut buf).unwrap();
        g.bench_function("read_through_atc", |b| {
            b.iter(|| {
                port.dma_read(0x10, 1, black_box(VA), flags, &mut buf)
                    .unwrap()
            })
        });
        let src = m.get_host_address(GuestAddress(PA)).unwrap();
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                // SAFETY: `len` bytes at GPA `PA` lie inside `m`, which
                // stays mapped for the whole benchmark, and do not overlap `buf`.
                unsafe { std::ptr::copy_nonoverlapping(black_box(src), buf.as_mut_ptr(), len) }
            })
        });
        g.finish();
    }
}

fn invalidation(c: &mut Criterion) {
    let mut g = c.benchmark_group("invalidate_one_page");
    let tag = TAG;
    for n in [64u64, 4096, 65536] {
        let mut iotlb = common::iotlb(n);
        // Only invalidations are timed: rounds of 64 single-page
        // invalidations of distinct cached pages (the same 64 for every cache
        // size), put back outside the timed part.
        g.bench_function(format!("iotlb_{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let k = left.min(64);
                    let t0 = Instant::now();
                    for i in 0..k {
                        let range = SRange::decode(VA + (i << 12), false);
                        black_box(iotlb.invalidate(tag, black_box(&range)));
                    }
                    total += t0.elapsed();
                    for i in 0..k {
                        iotlb.insert(tag, entry(i));
                    }
                    left -= k;
                }
                total
            })
        });
    }
    // The whole command path: INVALIDATE_IOMMU_PAGES for one page through
    // Iommu::execute (decode, locks, trace hook, statistics).
    let (iommu, _m) = iommu();
    let cmd = Command::InvalidateIommuPages {
        domain_id: 1,
        pasid: 1,
        gn: true,
        pde: false,
        range: SRange::decode(VA, false),
    };
    let raw = [(0x9000u64, cmd.encode())];
    g.bench_function("command_execute", |b| {
        b.iter_batched(
            || (),
            |_| iommu.execute(black_box(&raw)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, walks, hits, dma, invalidation);
criterion_main!(benches);
