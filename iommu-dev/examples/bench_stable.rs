//! Instruction counts of the model's hot paths, for `make bench-stable`
//! (scripts/bench-stable.py runs this under callgrind).
//!
//! `bench_stable OP N` sets OP up, warms it, then calls its measured
//! function `stable_op_OP` N times. Under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*stable_op_OP'`
//! only the instructions inside those calls are counted; the script runs
//! two values of N and divides the difference, so set-up and one-time
//! costs cancel. `bench_stable --list` prints the operations;
//! `bench_stable --time [OP...]` times them in turns (ratios in one run).

use std::hint::black_box;
use std::sync::Mutex;

use iommu_dev::ats::Atc;
use iommu_dev::cache::Iotlb;
use iommu_dev::mem::{self, Mem};
use iommu_dev::walker::{self, AdUpdate, Dirty, Perms, Start};
use iommu_dev::{AccessFlags, Command, Iommu, Port, SRange};
use vm_memory::{GuestAddress, GuestMemoryBackend};

#[path = "../benches/common/mod.rs"]
mod common;
use common::{entry, iommu, tables, PA, RD, TAG, VA};

const OPS: &[(&str, &str)] = &[
    (
        "walk_4level",
        "hot 4-level walk (A bits set, memory view warm)",
    ),
    ("walk_5level", "hot 5-level walk"),
    (
        "peer_walk_4level",
        "the x86_64 crate translating the same 4-level tables",
    ),
    (
        "iotlb_hit",
        "IOTLB lookup that hits (4,096 entries, behind its mutex)",
    ),
    (
        "atc_hit",
        "ATC lookup that hits (512 entries, behind a mutex)",
    ),
    (
        "iotlb_invalidate",
        "single-page IOTLB invalidation of a cached page (4,096 entries)",
    ),
    (
        "command_invalidate",
        "INVALIDATE_IOMMU_PAGES of one cached page through Iommu::execute",
    ),
    (
        "dma_4k",
        "4 KiB DMA read through the ATC (a device port, ATC hit)",
    ),
    (
        "memcpy_4k",
        "4 KiB memcpy from guest RAM, the reference of dma_4k",
    ),
    ("dma_64k", "64 KiB DMA read through the ATC"),
];

/// Timed by `--time` only: glibc copies 64 KiB with `rep movsb`, which
/// callgrind counts per byte, so its count would say nothing.
const TIME_ONLY: &[(&str, &str)] = &[(
    "memcpy_64k",
    "64 KiB memcpy from guest RAM, the reference of dma_64k",
)];

#[inline(never)]
fn stable_op_walk_4level(w: &mut mem::Words<'_>, top: Start) -> u64 {
    walk_from(w, top, 4)
}

#[inline(never)]
fn stable_op_walk_5level(w: &mut mem::Words<'_>, top: Start) -> u64 {
    walk_from(w, top, 5)
}

/// One walk, inlined into the counted function of its level.
#[inline(always)]
fn walk_from(w: &mut mem::Words<'_>, top: Start, levels: u8) -> u64 {
    let upd = AdUpdate::Update(Dirty::OnWrite);
    let r = walker::walk_words(w, top, levels, black_box(VA), RD, upd);
    // The whole translation stays where the walk wrote it (not copied).
    black_box(&r);
    r.map_or(0, |t| t.pa_base)
}

type Peer<'a> = x86_64::structures::paging::OffsetPageTable<'a>;

#[inline(never)]
fn stable_op_peer_walk_4level(pt: &Peer<'_>) -> u64 {
    use x86_64::structures::paging::Translate;
    pt.translate_addr(black_box(x86_64::VirtAddr::new(VA)))
        .unwrap()
        .as_u64()
}

#[inline(never)]
fn stable_op_iotlb_hit(t: &Mutex<Iotlb>) -> u64 {
    t.lock()
        .unwrap()
        .lookup(TAG, black_box(VA + 0x5123))
        .unwrap()
        .pa_base
}

#[inline(never)]
fn stable_op_atc_hit(a: &Mutex<Atc>) -> u64 {
    a.lock()
        .unwrap()
        .lookup(1, black_box(VA + 0x5123))
        .unwrap()
        .completion
        .pa_base
}

#[inline(never)]
fn stable_op_iotlb_invalidate(t: &mut Iotlb, va: u64) -> usize {
    t.invalidate(TAG, &SRange::decode(black_box(va), false))
}

#[inline(never)]
fn stable_op_command_invalidate(iommu: &Iommu, raw: &[(u64, [u8; 16])]) -> usize {
    iommu.execute(black_box(raw)).executed
}

#[inline(never)]
fn stable_op_dma_4k(port: &mut Port<'_>, buf: &mut [u8]) -> u32 {
    port.dma_read(0x10, 1, black_box(VA), FLAGS, buf)
        .unwrap()
        .atc_hits
}

#[inline(never)]
fn stable_op_memcpy_4k(src: *const u8, buf: &mut [u8]) {
    // SAFETY: the caller passes the host address of 4 KiB of guest RAM,
    // mapped for the whole run and not overlapping `buf` (4 KiB).
    unsafe { std::ptr::copy_nonoverlapping(black_box(src), buf.as_mut_ptr(), 4096) }
}

#[inline(never)]
fn stable_op_memcpy_64k(src: *const u8, buf: &mut [u8]) {
    // SAFETY: the caller passes the host address of 64 KiB of guest RAM,
    // mapped for the whole run and not overlapping `buf` (64 KiB).
    unsafe { std::ptr::copy_nonoverlapping(black_box(src), buf.as_mut_ptr(), 65536) }
}

#[inline(never)]
fn stable_op_dma_64k(port: &mut Port<'_>, buf: &mut [u8]) -> u32 {
    port.dma_read(0x10, 1, black_box(VA), FLAGS, buf)
        .unwrap()
        .atc_hits
}

const FLAGS: AccessFlags = AccessFlags::NO_PRI;

/// Guest memory with tables for `levels` and a warm walk (A bits set).
fn walk_setup(levels: u8) -> (&'static Mem, Start) {
    let m: &'static Mem = Box::leak(Box::new(mem::anon(0x100_0000)));
    let cr3 = tables(m, levels);
    walker::walk(m, cr3, levels, VA, RD, AdUpdate::Update(Dirty::OnWrite)).unwrap();
    let top = Start {
        level: levels,
        table: cr3,
        perms: Perms::ALL,
    };
    (m, top)
}

/// A page-aligned buffer of `len` bytes for the rest of the run: DMA and
/// memcpy copy into buffers aligned alike (a copy's speed depends on the
/// destination's alignment, which a plain Vec leaves to the allocator).
fn aligned_buf(len: usize) -> &'static mut [u8] {
    let v: &'static mut [u8] = Vec::leak(vec![0u8; len + 4096]);
    let skip = v.as_ptr().align_offset(4096);
    &mut v[skip..skip + len]
}

/// An IOMMU that lives for the rest of the run (ports borrow it).
fn leaked_iommu() -> (&'static Iommu, Mem) {
    let (iommu, m) = iommu();
    (Box::leak(Box::new(iommu)), m)
}

/// A runner of `n` operations.
type Runner = Box<dyn FnMut(u64)>;

/// Set `op` up: the returned runner calls its measured function n times.
fn setup(op: &str) -> Result<Runner, String> {
    Ok(match op {
        "walk_4level" | "walk_5level" => {
            let levels = if op == "walk_4level" { 4 } else { 5 };
            let (m, top) = walk_setup(levels);
            let mut w = mem::Words::new(m);
            let f = if levels == 4 {
                stable_op_walk_4level
            } else {
                stable_op_walk_5level
            };
            let want = walker::walk(m, top.table, levels, VA, RD, AdUpdate::ReadOnly).unwrap();
            Box::new(move |n| {
                for _ in 0..n {
                    assert_eq!(f(&mut w, top), want.pa_base);
                }
            })
        }
        "peer_walk_4level" => {
            use x86_64::structures::paging::{OffsetPageTable, PageTable};
            let (m, top) = walk_setup(4);
            let host = m.get_host_address(GuestAddress(0)).unwrap() as u64;
            // SAFETY: valid 4-level tables entirely inside `m`, which is
            // leaked (mapped for the rest of the run) at `host`; only read
            // through `translate_addr`.
            let pt = unsafe {
                OffsetPageTable::new(
                    &mut *((host + top.table) as *mut PageTable),
                    x86_64::VirtAddr::new(host),
                )
            };
            Box::new(move |n| {
                for _ in 0..n {
                    assert_eq!(stable_op_peer_walk_4level(&pt), PA);
                }
            })
        }
        "iotlb_hit" => {
            let t = Mutex::new(common::iotlb(4096));
            Box::new(move |n| {
                for _ in 0..n {
                    black_box(stable_op_iotlb_hit(&t));
                }
            })
        }
        "atc_hit" => {
            let a = Mutex::new(common::atc());
            Box::new(move |n| {
                for _ in 0..n {
                    black_box(stable_op_atc_hit(&a));
                }
            })
        }
        "iotlb_invalidate" => {
            let mut t = common::iotlb(4096);
            let mut k = 0;
            Box::new(move |n| {
                for _ in 0..n {
                    // 64 distinct pages in turn, each put back outside the count.
                    k = (k + 1) % 64;
                    assert_eq!(stable_op_iotlb_invalidate(&mut t, VA + (k << 12)), 1);
                    t.insert(TAG, entry(k));
                }
            })
        }
        "command_invalidate" => {
            let (iommu, _m) = leaked_iommu();
            let cmd = Command::InvalidateIommuPages {
                domain_id: 1,
                pasid: 1,
                gn: true,
                pde: true,
                range: SRange::decode(VA, false),
            };
            let raw = [(0x9000u64, cmd.encode())];
            let mut port = iommu.port();
            Box::new(move |n| {
                for _ in 0..n {
                    // Walk and fill the IOTLB and walk cache, outside the count.
                    port.ats_translate(0x10, 1, VA, FLAGS).unwrap();
                    assert_eq!(iommu.cache_sizes().0, 1);
                    assert_eq!(stable_op_command_invalidate(iommu, &raw), 1);
                    assert_eq!(iommu.cache_sizes().0, 0);
                }
            })
        }
        "dma_4k" | "dma_64k" => {
            let (iommu, _m) = leaked_iommu();
            let mut port = iommu.port();
            let len = if op == "dma_4k" { 4096 } else { 65536 };
            let buf = aligned_buf(len);
            port.dma_read(0x10, 1, VA, FLAGS, buf)
                .map_err(|e| format!("{e}"))?;
            let f = if len == 4096 {
                stable_op_dma_4k
            } else {
                stable_op_dma_64k
            };
            Box::new(move |n| {
                for _ in 0..n {
                    assert_eq!(f(&mut port, buf), (len / 4096) as u32);
                }
            })
        }
        "memcpy_4k" | "memcpy_64k" => {
            let (_iommu, m) = leaked_iommu();
            let src = m.get_host_address(GuestAddress(PA)).unwrap();
            let (len, f): (usize, fn(*const u8, &mut [u8])) = if op == "memcpy_4k" {
                (4096, stable_op_memcpy_4k)
            } else {
                (65536, stable_op_memcpy_64k)
            };
            let buf = aligned_buf(len);
            Box::new(move |n| {
                for _ in 0..n {
                    f(src, buf);
                }
            })
        }
        _ => return Err(format!("unknown operation '{op}' (--list lists them)")),
    })
}

/// `--time`: nanoseconds per operation, for ratios in one run on a loaded
/// machine. The operations take turns in bursts of about 100 µs; the
/// minimum over the bursts is the figure least disturbed by other jobs.
fn time(ops: &[&str], rounds: usize) -> Result<(), String> {
    use std::time::Instant;
    let mut runners = Vec::new();
    for op in ops {
        let mut r = setup(op)?;
        r(64);
        // Calibrate a burst of about 100 µs.
        let mut burst = 16u64;
        loop {
            let t0 = Instant::now();
            r(burst);
            if t0.elapsed().as_micros() >= 100 || burst >= 1 << 24 {
                break;
            }
            burst *= 2;
        }
        runners.push((op, r, burst, Vec::with_capacity(rounds)));
    }
    for _ in 0..rounds {
        for (_, r, burst, samples) in runners.iter_mut() {
            let t0 = Instant::now();
            r(*burst);
            samples.push(t0.elapsed().as_nanos() as f64 / *burst as f64);
        }
    }
    println!("{:<20} {:>10} {:>10}", "operation", "min ns", "median ns");
    for (op, _, _, mut samples) in runners {
        samples.sort_by(f64::total_cmp);
        println!(
            "{op:<20} {:>10.2} {:>10.2}",
            samples[0],
            samples[samples.len() / 2]
        );
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.as_slice() {
        [l] if l == "--list" => {
            for (name, what) in OPS {
                println!("{name}\t{what}");
            }
            Ok(())
        }
        [t, rest @ ..] if t == "--time" => {
            let ops: Vec<&str> = if rest.is_empty() {
                OPS.iter().chain(TIME_ONLY).map(|(n, _)| *n).collect()
            } else {
                rest.iter().map(String::as_str).collect()
            };
            time(&ops, 400)
        }
        [op, n] => match n.parse::<u64>() {
            Ok(n) => setup(op).map(|mut r| r(n)),
            Err(_) => Err(format!("N must be a number, not '{n}'")),
        },
        _ => Err("usage: bench_stable OP N | --list | --time [OP...]".into()),
    };
    if let Err(e) = r {
        eprintln!("bench_stable: {e}");
        std::process::exit(1);
    }
}
