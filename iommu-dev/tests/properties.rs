//! Property tests: the walker against an independently written reference and
//! against the `x86_64` crate's translation, and no panic on arbitrary guest
//! memory, DTEs, GCR3 tables, commands and accesses.

use std::time::Duration;

use iommu_dev::mem::{self, Mem};
use iommu_dev::walker::{self, AdUpdate, Request, WalkFault};
use iommu_dev::{AccessFlags, DevTableBase, Iommu, IommuConfig};
use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryBackend};

const MEM: usize = 0x80_0000;
const TABLES: u64 = 0x1000;

/// Reference walker, written from the x86 rules without looking at ours:
/// collect all entries top-down first, then judge.
#[derive(Debug, PartialEq, Eq)]
enum RefOut {
    Ok { pa: u64, size: u64 },
    NotPresent,
    Denied,
    Reserved,
    NonCanonical,
    Memory,
}

fn reference(
    m: &Mem,
    cr3: u64,
    levels: u32,
    va: u64,
    write: bool,
    user: bool,
    exec: bool,
) -> RefOut {
    let width = 12 + 9 * levels;
    let sign = va >> (width - 1);
    if !(sign == 0 || sign == (1u64 << (65 - width)) - 1) {
        return RefOut::NonCanonical;
    }
    let mut table = cr3 & 0x000f_ffff_ffff_f000;
    let (mut w, mut u, mut nx) = (true, true, false);
    for depth in 0..levels {
        let level = levels - depth;
        let shift = 12 + 9 * (level - 1);
        let slot = table + ((va >> shift) & 511) * 8;
        let Ok(e) = mem::load_u64(m, slot) else {
            return RefOut::Memory;
        };
        if e & 1 == 0 {
            return RefOut::NotPresent;
        }
        let big = e & 0x80 != 0;
        if e & 0x000f_0000_0000_0000 != 0 || (big && level >= 4) {
            return RefOut::Reserved;
        }
        if big && (level == 2 || level == 3) {
            let low = e & ((1u64 << shift) - 1) & !0x1fff;
            if low != 0 {
                return RefOut::Reserved;
            }
        }
        w &= e & 2 != 0;
        u &= e & 4 != 0;
        nx |= e >> 63 == 1;
        if level == 1 || big {
            if (user && !u) || (write && !w) || (exec && nx) {
                return RefOut::Denied;
            }
            let base = e & 0x000f_ffff_ffff_f000 & !((1u64 << shift) - 1);
            return RefOut::Ok {
                pa: base + (va & ((1u64 << shift) - 1)),
                size: 1 << shift,
            };
        }
        table = e & 0x000f_ffff_ffff_f000;
    }
    unreachable!()
}

fn ours(m: &Mem, cr3: u64, levels: u8, va: u64, write: bool, user: bool, exec: bool) -> RefOut {
    let req = Request {
        write,
        exec,
        privileged: !user,
    };
    match walker::walk(m, cr3, levels, va, req, AdUpdate::ReadOnly) {
        Ok(t) => RefOut::Ok {
            pa: t.pa(va),
            size: 1 << t.size_log2,
        },
        Err(WalkFault::NotPresent { .. }) => RefOut::NotPresent,
        Err(WalkFault::Permission { .. }) => RefOut::Denied,
        Err(WalkFault::Reserved { .. }) => RefOut::Reserved,
        Err(WalkFault::NonCanonical) => RefOut::NonCanonical,
        Err(WalkFault::Memory { .. }) => RefOut::Memory,
    }
}

/// A mapping: VA (from a small set of slots so that mappings share tables),
/// leaf level, leaf flags and directory flags.
type Mapping = (u64, u8, u64, u64);

fn mapping(levels: u8) -> impl Strategy<Value = Mapping> {
    let top = if levels == 5 { 4u64 } else { 1 };
    (
        (0..top, 0u64..3, 0u64..3, 0u64..3, 0u64..3, 0u64..0x1000).prop_map(
            |(a, b, c, d, e, o)| (a << 48) | (b << 39) | (c << 30) | (d << 21) | (e << 12) | o,
        ),
        prop_oneof![4 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        // Leaf: mostly present; R/W, U/S, NX, A, D random.
        (
            prop::bits::u64::masked(0x8000_0000_0000_0066),
            prop::bool::weighted(0.9),
        )
            .prop_map(|(f, p)| f | u64::from(p)),
        prop::bits::u64::masked(0x8000_0000_0000_0006).prop_map(|f| f | 1),
    )
}

/// Damage applied after mapping: (mapping index, level, kind).
fn damage() -> impl Strategy<Value = (usize, u8, u8)> {
    (0usize..64, 1u8..=5, 0u8..6)
}

fn build(m: &Mem, levels: u8, maps: &[Mapping], damages: &[(usize, u8, u8)]) -> Vec<u64> {
    use iommu_dev::pgtable::Tables;
    let mut t = Tables::new(m, levels, TABLES);
    let mut vas = Vec::new();
    for (i, &(va, leaf, flags, dir)) in maps.iter().enumerate() {
        let shift = 12 + 9 * (u32::from(leaf) - 1);
        let pa = (0x40_0000 + ((i as u64) << shift)) & !((1u64 << shift) - 1) & 0x7fff_ffff;
        t.map(va, pa, leaf, flags, dir);
        vas.push(va);
    }
    for &(i, level, kind) in damages {
        let (va, leaf, _, _) = maps[i % maps.len()];
        let level = level.min(levels).max(leaf);
        let Some(gpa) = t.try_entry_gpa(va, level) else {
            continue;
        };
        let Ok(e) = mem::load_u64(m, gpa) else {
            continue;
        };
        let v = match kind {
            0 => e | 0x80,                  // PS: reserved in PML4E/PML5E, a leaf elsewhere
            1 => e | 1 << 49,               // reserved physical-address bit
            2 => e & !1,                    // not present
            3 => e | 0x2000,                // misaligned if a large leaf
            4 => (e & 0xfff) | 0x7000_0000, // pointer outside RAM
            _ => e ^ 0x8000_0000_0000_0006, // flip NX, U/S, R/W
        };
        mem::store_u64(m, gpa, v).unwrap();
    }
    vas
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn walker_agrees_with_reference(
        levels in prop_oneof![Just(4u8), Just(5u8)],
        maps in prop::collection::vec(mapping(5), 1..24),
        damages in prop::collection::vec(damage(), 0..6),
        probes in prop::collection::vec(any::<u64>(), 1..8),
        req in (any::<bool>(), any::<bool>(), any::<bool>()),
    ) {
        let m = mem::anon(MEM);
        let low = |va: u64| if levels == 4 { va & ((1 << 47) - 1) } else { va };
        let maps: Vec<Mapping> = maps.into_iter().map(|(va, l, f, d)| (low(va), l, f, d)).collect();
        let vas = build(&m, levels, &maps, &damages);
        let (write, user, exec) = req;
        for va in vas.iter().chain(probes.iter()) {
            prop_assert_eq!(
                ours(&m, TABLES, levels, *va, write, user, exec),
                reference(&m, TABLES, u32::from(levels), *va, write, user, exec),
                "va {:#x} levels {}", va, levels
            );
        }
    }
}

/// Guest RAM as bytes, to compare the A/D updates two walks made.
fn ram(m: &Mem) -> Vec<u8> {
    use vm_memory::Bytes;
    let mut v = vec![0u8; MEM];
    m.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `walk_words` (fast path, then the general walk when it gives up)
    /// against the general walk alone: the same result and the same A/D
    /// updates in guest memory, for every A/D mode, request and starting
    /// level (a walk-cache hit starts below the top), on tables whose
    /// directory entries have A set or clear.
    #[test]
    fn fast_path_agrees_with_general_walk(
        levels in prop_oneof![Just(4u8), Just(5u8)],
        maps in prop::collection::vec(mapping(5), 1..24),
        accessed in prop::collection::vec(prop::bool::weighted(0.8), 24),
        damages in prop::collection::vec(damage(), 0..6),
        probes in prop::collection::vec(any::<u64>(), 1..4),
        req in (any::<bool>(), any::<bool>(), any::<bool>()),
        mode in 0u8..4,
        below in 0u8..5,
    ) {
        use iommu_dev::pgtable::Tables;
        use iommu_dev::walker::{Dirty, Perms, Start};
        let low = |va: u64| if levels == 4 { va & ((1 << 47) - 1) } else { va };
        let maps: Vec<Mapping> = maps
            .into_iter()
            .zip(&accessed)
            .map(|((va, l, f, d), a)| (low(va), l, f, d | if *a { 0x20 } else { 0 }))
            .collect();
        let (fast_mem, general_mem) = (mem::anon(MEM), mem::anon(MEM));
        let vas = build(&fast_mem, levels, &maps, &damages);
        build(&general_mem, levels, &maps, &damages);
        let (write, privileged, exec) = req;
        let req = Request { write, exec, privileged };
        let ad = match mode {
            0 => AdUpdate::ReadOnly,
            1 => AdUpdate::Update(Dirty::Never),
            2 => AdUpdate::Update(Dirty::OnWrite),
            _ => AdUpdate::Update(Dirty::IfWritable),
        };
        let mut fast_words = mem::Words::new(&fast_mem);
        let mut general_words = mem::Words::new(&general_mem);
        for va in vas.iter().chain(probes.iter()) {
            // Start at the top, or `below` levels down where the tables lead
            // there (as from a walk-cache entry, with its permissions).
            let mut start = Start { level: levels, table: TABLES, perms: Perms::ALL };
            let t = Tables::resume(&fast_mem, levels, TABLES, 0);
            for level in ((levels - below.min(levels - 1))..levels).rev() {
                let Some(e) = t.try_entry_gpa(*va, level + 1).and_then(|g| mem::load_u64(&fast_mem, g).ok()) else {
                    break;
                };
                if e & 1 == 0 || (e & 0x80 != 0 && level < 3) {
                    break;
                }
                start = Start {
                    level,
                    table: e & 0x000f_ffff_ffff_f000,
                    perms: Perms { write: start.perms.write && e & 2 != 0, user: start.perms.user && e & 4 != 0, nx: start.perms.nx || e >> 63 != 0 },
                };
            }
            let fast = walker::walk_words(&mut fast_words, start, levels, *va, req, ad);
            let general = walker::walk_words_general(&mut general_words, start, levels, *va, req, ad);
            prop_assert_eq!(fast, general, "va {:#x} levels {} start {:?}", va, levels, start);
        }
        // A/D bits are only ever set, so a difference would last to here.
        prop_assert!(ram(&fast_mem) == ram(&general_mem), "A/D updates differ");
    }
}

/// Valid 4-level tables only (pointers inside RAM, no reserved bits), so the
/// `x86_64` crate can walk them through the host mapping.
fn valid_mappings() -> impl Strategy<Value = Vec<(u64, u8)>> {
    prop::collection::vec((0u64..(1 << 27), 1u8..=3), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn walker_agrees_with_x86_64_crate(maps in valid_mappings(), probes in prop::collection::vec(0u64..(1 << 39), 1..32)) {
        use iommu_dev::pgtable::{Tables, DIR, USER_RW};
        use x86_64::structures::paging::mapper::TranslateResult;
        use x86_64::structures::paging::{OffsetPageTable, PageTable, Translate};
        use x86_64::VirtAddr;

        let m = mem::anon(0x400_0000);
        let mut t = Tables::new(&m, 4, 0x10_0000);
        let mut mapped = Vec::new();
        for (i, (page, level)) in maps.iter().enumerate() {
            // VA: spread over the first 512 GiB; leaves of 4 KiB, 2 MiB, 1 GiB.
            let shift = 12 + 9 * (u32::from(*level) - 1);
            let va = (page << 12) & !((1u64 << shift) - 1) & ((1u64 << 39) - 1);
            if mapped.iter().any(|&(v, s): &(u64, u32)| v >> 30 == va >> 30 && (s != shift || s == 30)) {
                continue; // keep one leaf size per 1 GiB region: no table/leaf conflicts
            }
            let pa = (0x100_0000 + (i as u64) * 0x1000) & !((1u64 << shift) - 1);
            t.map(va, pa, *level, USER_RW, DIR);
            mapped.push((va, shift));
        }
        let host = m.get_host_address(GuestAddress(0)).unwrap() as u64;
        // SAFETY: the tables are valid 4-level tables whose every pointer lies
        // inside `m`, which is mapped at `host` for the whole block; the
        // PageTable reference is only read through `translate`.
        let pt = unsafe { OffsetPageTable::new(&mut *((host + t.cr3) as *mut PageTable), VirtAddr::new(host)) };
        for va in probes.iter().copied().chain(mapped.iter().map(|m| m.0 + 0x123)) {
            let ours = ours(&m, t.cr3, 4, va, false, false, false);
            let peer = match pt.translate(VirtAddr::new(va)) {
                TranslateResult::Mapped { frame, offset, .. } => {
                    RefOut::Ok { pa: frame.start_address().as_u64() + offset, size: frame.size() }
                }
                TranslateResult::NotMapped => RefOut::NotPresent,
                TranslateResult::InvalidFrameAddress(_) => RefOut::Reserved,
            };
            prop_assert_eq!(ours, peer, "va {:#x}", va);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Arbitrary memory contents, device-table register, control, DTEs,
    /// GCR3 entries, commands and accesses: errors and events, never a panic.
    #[test]
    fn arbitrary_guest_input_never_panics(
        words in prop::collection::vec((0u64..(0x4_0000 / 8), any::<u64>()), 0..300),
        devtab in any::<u64>(),
        control in prop_oneof![any::<u64>(), Just(iommu_dev::control::IOMMU_EN | iommu_dev::control::GT_EN | iommu_dev::control::EVENT_LOG_EN | iommu_dev::control::PPR_EN | iommu_dev::control::PPR_LOG_EN)],
        cmds in prop::collection::vec((any::<[u8; 16]>(), 0u8..9), 0..24),
        accesses in prop::collection::vec((any::<u32>(), any::<u64>(), 0u8..4, any::<u16>()), 0..16),
    ) {
        let m = mem::anon(0x4_0000);
        for (slot, v) in &words {
            mem::store_u64(&m, slot * 8, *v).unwrap();
        }
        let cfg = IommuConfig { endpoints: vec![0x10, 0x11], pri_timeout: Duration::from_millis(1), ..Default::default() };
        let iommu = Iommu::new(cfg, GuestMemoryAtomic::new(m));
        let _ = iommu.set_device_table(devtab, control);
        let _ = iommu.set_device_table(DevTableBase::encode(0, 1), control);
        let batch: Vec<(u64, [u8; 16])> = cmds
            .into_iter()
            .enumerate()
            .map(|(i, (mut raw, op))| {
                raw[7] = (raw[7] & 0x0f) | (op << 4); // mostly valid opcodes
                (0x1000 + 16 * i as u64, raw)
            })
            .collect();
        let _ = iommu.execute(&batch);
        for (pasid, va, op, dev) in accesses {
            let devid = 0x10 + (dev & 1);
            let flags = AccessFlags { no_pri: dev & 2 == 0, privileged: dev & 4 != 0, exec: dev & 8 != 0, untranslated: dev & 16 != 0, ..Default::default() };
            let pasid = pasid & 0x1ffff;
            let mut buf = [0u8; 16];
            let _ = match op {
                0 => iommu.ats_translate(devid, pasid, va, flags).map(|_| ()),
                1 => iommu.dma_read(devid, pasid, va, flags, &mut buf).map(|_| ()),
                2 => iommu.dma_write(devid, pasid, va, flags, &buf).map(|_| ()),
                _ => iommu.audit(pasid, va, 0x4000, 4).map(|_| ()),
            };
        }
        let _ = iommu.execute(&batch);
        let _ = iommu.oracle().read(64, true);
        let _ = iommu.event_log().take(usize::MAX);
    }
}

/// The generators must reach every outcome, or the differential test proves little.
#[test]
fn generators_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let maps = prop::collection::vec(mapping(4), 1..24)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let damages = prop::collection::vec(damage(), 0..6)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let m = mem::anon(MEM);
        for va in build(&m, 4, &maps, &damages) {
            seen.insert(match reference(&m, TABLES, 4, va, true, true, false) {
                RefOut::Ok { size, .. } => format!("ok{size}"),
                other => format!("{other:?}"),
            });
        }
    }
    for want in [
        "ok4096",
        "ok2097152",
        "ok1073741824",
        "NotPresent",
        "Denied",
        "Reserved",
        "Memory",
    ] {
        assert!(seen.contains(want), "{want} never produced: {seen:?}");
    }
}
