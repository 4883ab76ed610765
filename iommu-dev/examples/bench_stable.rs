//! Instruction counts of the model's hot paths, for `make bench-stable`
//! (scripts/bench-stable.py runs this under callgrind).
//!
//! `bench_stable OP N` sets OP up, warms it, then calls its measured
//! function `stable_op_OP` N times. Under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*stable_op_OP'`
//! only the instructions inside those calls are counted; the script runs
//! two values of N and divides the difference, so set-up and one-time
//! costs cancel. `bench_stable --list` prints the operations. Without
//! valgrind it just runs (a smoke test).

use std::hint::black_box;
use std::sync::Mutex;

use iommu_dev::ats::Atc;
use iommu_dev::cache::Iotlb;
use iommu_dev::mem::{self, Mem};
use iommu_dev::walker::{self, AdUpdate, Dirty, Perms, Start, Translation};
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

#[inline(never)]
fn stable_op_walk_4level(w: &mut mem::Words<'_>, top: Start) -> Translation {
    let upd = AdUpdate::Update(Dirty::OnWrite);
    walker::walk_words(w, top, 4, black_box(VA), RD, upd).unwrap()
}

#[inline(never)]
fn stable_op_walk_5level(w: &mut mem::Words<'_>, top: Start) -> Translation {
    let upd = AdUpdate::Update(Dirty::OnWrite);
    walker::walk_words(w, top, 5, black_box(VA), RD, upd).unwrap()
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
fn stable_op_dma_64k(port: &mut Port<'_>, buf: &mut [u8]) -> u32 {
    port.dma_read(0x10, 1, black_box(VA), FLAGS, buf)
        .unwrap()
        .atc_hits
}

const FLAGS: AccessFlags = AccessFlags {
    privileged: false,
    exec: false,
    no_write: false,
    no_pri: true,
    atc_only: false,
    untranslated: false,
};

/// Guest memory with tables for `levels` and a warm walk (A bits set).
fn walk_setup(levels: u8) -> (Mem, Start) {
    let m = mem::anon(0x100_0000);
    let cr3 = tables(&m, levels);
    walker::walk(&m, cr3, levels, VA, RD, AdUpdate::Update(Dirty::OnWrite)).unwrap();
    let top = Start {
        level: levels,
        table: cr3,
        perms: Perms::ALL,
    };
    (m, top)
}

fn run(op: &str, n: u64) -> Result<(), String> {
    const WARM: u64 = 16;
    match op {
        "walk_4level" | "walk_5level" => {
            let levels = if op == "walk_4level" { 4 } else { 5 };
            let (m, top) = walk_setup(levels);
            let mut w = mem::Words::new(&m);
            let f = if levels == 4 {
                stable_op_walk_4level
            } else {
                stable_op_walk_5level
            };
            let want = walker::walk(&m, top.table, levels, VA, RD, AdUpdate::ReadOnly).unwrap();
            for _ in 0..WARM {
                black_box(
                    walker::walk_words(&mut w, top, levels, VA, RD, AdUpdate::ReadOnly).unwrap(),
                );
            }
            for _ in 0..n {
                assert_eq!(f(&mut w, top).pa_base, want.pa_base);
            }
        }
        "peer_walk_4level" => {
            use x86_64::structures::paging::{OffsetPageTable, PageTable};
            let (m, top) = walk_setup(4);
            let host = m.get_host_address(GuestAddress(0)).unwrap() as u64;
            // SAFETY: valid 4-level tables entirely inside `m`, mapped at
            // `host` for the whole run; only read through `translate_addr`.
            let pt = unsafe {
                OffsetPageTable::new(
                    &mut *((host + top.table) as *mut PageTable),
                    x86_64::VirtAddr::new(host),
                )
            };
            for _ in 0..n {
                assert_eq!(stable_op_peer_walk_4level(&pt), PA);
            }
        }
        "iotlb_hit" => {
            let t = Mutex::new(common::iotlb(4096));
            for _ in 0..n {
                black_box(stable_op_iotlb_hit(&t));
            }
        }
        "atc_hit" => {
            let a = Mutex::new(common::atc());
            for _ in 0..n {
                black_box(stable_op_atc_hit(&a));
            }
        }
        "iotlb_invalidate" => {
            let mut t = common::iotlb(4096);
            for i in 0..n {
                // 64 distinct pages in turn, each put back outside the count.
                let k = i % 64;
                assert_eq!(stable_op_iotlb_invalidate(&mut t, VA + (k << 12)), 1);
                t.insert(TAG, entry(k));
            }
        }
        "command_invalidate" => {
            let (iommu, _m) = iommu();
            let cmd = Command::InvalidateIommuPages {
                domain_id: 1,
                pasid: 1,
                gn: true,
                pde: true,
                range: SRange::decode(VA, false),
            };
            let raw = [(0x9000u64, cmd.encode())];
            let mut port = iommu.port();
            for _ in 0..n {
                // Walk and fill the IOTLB and walk cache, outside the count.
                port.ats_translate(0x10, 1, VA, FLAGS)
                    .map_err(|e| format!("{e}"))?;
                assert_eq!(iommu.cache_sizes().0, 1);
                assert_eq!(stable_op_command_invalidate(&iommu, &raw), 1);
                assert_eq!(iommu.cache_sizes().0, 0);
            }
        }
        "dma_4k" | "dma_64k" => {
            let (iommu, _m) = iommu();
            let mut port = iommu.port();
            let len = if op == "dma_4k" { 4096 } else { 65536 };
            let mut buf = vec![0u8; len];
            for _ in 0..WARM {
                port.dma_read(0x10, 1, VA, FLAGS, &mut buf)
                    .map_err(|e| format!("{e}"))?;
            }
            let f = if len == 4096 {
                stable_op_dma_4k
            } else {
                stable_op_dma_64k
            };
            for _ in 0..n {
                assert_eq!(f(&mut port, &mut buf), (len / 4096) as u32);
            }
        }
        "memcpy_4k" => {
            let (_iommu, m) = iommu();
            let src = m.get_host_address(GuestAddress(PA)).unwrap();
            let mut buf = vec![0u8; 4096];
            for _ in 0..n {
                stable_op_memcpy_4k(src, &mut buf);
            }
        }
        _ => return Err(format!("unknown operation '{op}' (--list lists them)")),
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [l] if l == "--list" => {
            for (name, what) in OPS {
                println!("{name}\t{what}");
            }
        }
        [op, n] => {
            let n: u64 = n.parse().unwrap_or_else(|_| {
                eprintln!("bench_stable: N must be a number, not '{n}'");
                std::process::exit(2)
            });
            if let Err(e) = run(op, n) {
                eprintln!("bench_stable: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: bench_stable OP N | bench_stable --list");
            std::process::exit(2);
        }
    }
}
