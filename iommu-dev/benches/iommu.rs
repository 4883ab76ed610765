//! Benchmarks with targets from the iommu-dev issue: hot 4-/5-level walks
//! (against the `x86_64` crate translating the same tables), IOTLB and ATC
//! hits, 4 KiB DMA through the ATC (against a plain memcpy), and single-page
//! invalidation with 64 / 4,096 / 65,536 cached entries.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use iommu_dev::ats::{Atc, AtsCompletion};
use iommu_dev::cache::{Iotlb, Tag, TlbEntry};
use iommu_dev::mem::{self, Mem};
use iommu_dev::pgtable::{self, Tables};
use iommu_dev::walker::{self, AdUpdate, Dirty, Perms, Request, Start};
use iommu_dev::{control, AccessFlags, Command, DevTableBase, Dte, Iommu, IommuConfig, SRange};
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryBackend};

const VA: u64 = 0x7f12_3456_7000;
const RD: Request = Request {
    write: false,
    exec: false,
    privileged: false,
};

fn tables(m: &Mem, levels: u8) -> u64 {
    let mut t = Tables::new(m, levels, 0x10_0000);
    t.map_4k(VA, 0x80_0000);
    t.cr3
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
        g.bench_function(format!("hot_{levels}level"), |b| {
            b.iter(|| walker::walk_words(&mut words, top, levels, black_box(VA), RD, upd).unwrap())
        });
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
        assert_eq!(
            pt.translate_addr(VirtAddr::new(VA)).unwrap().as_u64(),
            0x80_0000
        );
        g.bench_function("peer_x86_64_crate_4level", |b| {
            b.iter(|| pt.translate_addr(black_box(VirtAddr::new(VA))).unwrap())
        });
    }
    g.finish();
}

fn entry(i: u64) -> TlbEntry {
    TlbEntry {
        va_base: VA + (i << 12),
        pa_base: 0x80_0000 + (i << 12),
        size_log2: 12,
        perms: Perms::ALL,
        dirty: true,
    }
}

fn hits(c: &mut Criterion) {
    let mut g = c.benchmark_group("hit");
    let tag = Tag {
        domain_id: 1,
        pasid: 1,
    };
    let mut iotlb = Iotlb::new(4096);
    for i in 0..4096 {
        iotlb.insert(tag, entry(i));
    }
    let iotlb = std::sync::Mutex::new(iotlb);
    g.bench_function("iotlb", |b| {
        b.iter(|| {
            iotlb
                .lock()
                .unwrap()
                .lookup(tag, black_box(VA + 0x5123))
                .unwrap()
        })
    });
    let mut atc = Atc::new(512);
    for i in 0..512 {
        atc.insert(
            1,
            VA + (i << 12),
            AtsCompletion {
                r: true,
                w: true,
                pa_base: 0x80_0000 + (i << 12),
                size_log2: 12,
                ..Default::default()
            },
        );
    }
    let atc = std::sync::Mutex::new(atc);
    g.bench_function("atc", |b| {
        b.iter(|| {
            atc.lock()
                .unwrap()
                .lookup(1, black_box(VA + 0x5123))
                .unwrap()
        })
    });
    g.finish();
}

/// A guest with one endpoint, PASID 1 bound to 4-level tables mapping VA.
fn iommu() -> (Iommu, Mem) {
    let m = mem::anon(0x200_0000);
    let cr3 = tables(&m, 4);
    pgtable::write_dte(&m, 0x1000, 0x10, &Dte::encode_v2(1, 0x2000, 0, true, false));
    pgtable::write_gcr3_entry(&m, 0x2000, 1, cr3);
    let cfg = IommuConfig {
        oracle: false,
        ..Default::default()
    };
    let iommu = Iommu::new(cfg, GuestMemoryAtomic::new(m.clone()));
    iommu
        .set_device_table(
            DevTableBase::encode(0x1000, 1),
            control::IOMMU_EN | control::GT_EN,
        )
        .unwrap();
    (iommu, m)
}

fn dma(c: &mut Criterion) {
    let mut g = c.benchmark_group("dma_4k");
    let (iommu, m) = iommu();
    let flags = AccessFlags {
        no_pri: true,
        ..Default::default()
    };
    let mut buf = vec![0u8; 4096];
    // A device thread's port: the memory map is looked up once, not per access.
    let mut port = iommu.port();
    port.dma_read(0x10, 1, VA, flags, &mut buf).unwrap();
    g.bench_function("read_through_atc", |b| {
        b.iter(|| {
            port.dma_read(0x10, 1, black_box(VA), flags, &mut buf)
                .unwrap()
        })
    });
    let src = m.get_host_address(GuestAddress(0x80_0000)).unwrap();
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            // SAFETY: 4096 bytes at GPA 0x80_0000 lie inside `m`, which stays
            // mapped for the whole benchmark, and do not overlap `buf`.
            unsafe { std::ptr::copy_nonoverlapping(black_box(src), buf.as_mut_ptr(), 4096) }
        })
    });
    g.finish();
}

fn invalidation(c: &mut Criterion) {
    let mut g = c.benchmark_group("invalidate_one_page");
    let tag = Tag {
        domain_id: 1,
        pasid: 1,
    };
    for n in [64u64, 4096, 65536] {
        let mut iotlb = Iotlb::new(n as usize);
        for i in 0..n {
            iotlb.insert(tag, entry(i));
        }
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
