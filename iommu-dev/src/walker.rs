//! x86-64 guest page-table walker, 4 and 5 levels, 4 KiB / 2 MiB / 1 GiB
//! leaves (§3). It reads the CPU's own tables from guest memory, sets the
//! Accessed and Dirty bits with locked compare-exchange (§3.4) and restarts
//! when an entry changed under it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::mem::{self, Mem};

pub const PTE_P: u64 = 1 << 0;
pub const PTE_RW: u64 = 1 << 1;
pub const PTE_US: u64 = 1 << 2;
pub const PTE_A: u64 = 1 << 5;
pub const PTE_D: u64 = 1 << 6;
pub const PTE_PS: u64 = 1 << 7;
pub const PTE_NX: u64 = 1 << 63;
/// Physical-address bits the model implements; bits 51:PA_BITS are reserved.
pub const PA_BITS: u32 = 48;
pub(crate) const ADDR_MASK: u64 = ((1u64 << 52) - 1) & !0xfff;
const RESERVED_PA: u64 = ((1u64 << 52) - 1) & !((1u64 << PA_BITS) - 1);
const MAX_RESTARTS: u32 = 64;

/// What the requester asks for (§3.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    /// Write permission is required (a DMA write); an ATS request with NW=0
    /// does not require it but is granted it when present.
    pub write: bool,
    pub exec: bool,
    /// Supervisor (PMR=1) requester; user otherwise.
    pub privileged: bool,
}

/// When the walker sets the leaf's Dirty bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dirty {
    /// Never (read-only translation, NW=1).
    Never,
    /// When the request is a write.
    OnWrite,
    /// When the resulting translation grants write (ATS with NW=0).
    IfWritable,
}

/// Accessed/Dirty handling: hardware walks update, the oracle only looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdUpdate {
    Update(Dirty),
    ReadOnly,
}

/// Effective permissions across all levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Perms {
    pub write: bool,
    pub user: bool,
    pub nx: bool,
}

impl Perms {
    pub const ALL: Perms = Perms {
        write: true,
        user: true,
        nx: false,
    };

    fn and_entry(self, e: u64) -> Perms {
        Perms {
            write: self.write && e & PTE_RW != 0,
            user: self.user && e & PTE_US != 0,
            nx: self.nx || e & PTE_NX != 0,
        }
    }

    /// Whether these permissions allow the request (§3.3, CR0.WP=1).
    pub fn allow(&self, req: &Request) -> bool {
        (req.privileged || self.user) && (!req.write || self.write) && !(req.exec && self.nx)
    }
}

/// One upper-level (non-leaf) entry the walk used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upper {
    pub level: u8,
    pub gpa: u64,
    pub value: u64,
}

/// A successful walk: what a cache, an ATS completion and the oracle need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Page base of the input address, aligned to the leaf size.
    pub va_base: u64,
    /// Physical base of the leaf page.
    pub pa_base: u64,
    pub leaf_gpa: u64,
    pub leaf: u64,
    /// The table the walk started from (CR3, or a walk-cache hit).
    pub start_table: u64,
    /// Values of the upper-level entries used, from the top down
    /// (`[..nuppers]`; the rest 0). [`Translation::uppers`] adds their
    /// levels and addresses.
    pub upper_values: [u64; 4],
    /// 12, 21 or 30.
    pub size_log2: u8,
    pub perms: Perms,
    /// The leaf's D bit once the walk is done.
    pub dirty: bool,
    pub nuppers: u8,
}

impl Translation {
    pub fn pa(&self, va: u64) -> u64 {
        self.pa_base | (va & ((1u64 << self.size_log2) - 1))
    }

    /// Level of the leaf: 1, 2 or 3.
    pub fn leaf_level(&self) -> u8 {
        (self.size_log2 - 12) / 9 + 1
    }

    /// The upper-level entries used, from the top down: each entry's
    /// address follows from the table above it and the input address.
    pub fn uppers(&self) -> impl Iterator<Item = Upper> + '_ {
        let top = self.leaf_level() + self.nuppers;
        let mut table = self.start_table;
        self.upper_values[..usize::from(self.nuppers)]
            .iter()
            .zip((0..top).rev().map(|l| l + 1))
            .map(move |(&value, level)| {
                let gpa = table + 8 * index(self.va_base, level);
                table = value & ADDR_MASK;
                Upper { level, gpa, value }
            })
    }
}

/// Why a walk failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkFault {
    /// An entry with P=0 at `level` (PR=0).
    NotPresent { level: u8 },
    /// Present entries deny the request (PR=1, PE=1).
    Permission { perms: Perms },
    /// A reserved bit is set in the entry at `gpa` (RZ=1).
    Reserved { level: u8, gpa: u64, entry: u64 },
    /// The input address is not canonical for the paging depth.
    NonCanonical,
    /// A table read failed at `gpa` (PAGE_TAB_HARDWARE_ERROR).
    Memory { gpa: u64 },
}

impl WalkFault {
    pub fn present(&self) -> bool {
        matches!(self, WalkFault::Permission { .. })
    }
}

/// Where a walk starts: the top (CR3) or a table found in the walk cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Level of the table at `table` (5..=1).
    pub level: u8,
    pub table: u64,
    /// Permissions accumulated above `level`.
    pub perms: Perms,
}

pub fn canonical(va: u64, levels: u8) -> bool {
    let bits = 12 + 9 * u32::from(levels);
    let top = (va as i64) >> (bits - 1);
    top == 0 || top == -1
}

pub(crate) fn index(va: u64, level: u8) -> u64 {
    (va >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff
}

/// Reserved bits of an entry at `level` (§3.2): PA bits above PA_BITS;
/// PS in a PML4E/PML5E; in a 2 MiB / 1 GiB leaf, the PA bits below the page
/// size other than PAT (bit 12).
#[inline]
fn reserved_bits(e: u64, level: u8) -> u64 {
    const LARGE_LOW: [u64; 6] = [
        0,
        0,
        ((1 << 21) - 1) & !0x1fff,
        ((1 << 30) - 1) & !0x1fff,
        PTE_PS,
        PTE_PS,
    ];
    let ps_mask = if e & PTE_PS != 0 {
        LARGE_LOW[level as usize]
    } else {
        0
    };
    e & (RESERVED_PA | ps_mask)
}

/// Walk the table rooted at `cr3` with `levels` levels (4 or 5) for `va`.
pub fn walk(
    mem: &Mem,
    cr3: u64,
    levels: u8,
    va: u64,
    req: Request,
    ad: AdUpdate,
) -> Result<Translation, WalkFault> {
    let top = Start {
        level: levels,
        table: cr3 & ADDR_MASK,
        perms: Perms::ALL,
    };
    walk_from(mem, top, levels, va, req, ad)
}

/// Walk from `start` (the top, or a walk-cache hit) down to the leaf.
pub fn walk_from(
    mem: &Mem,
    start: Start,
    levels: u8,
    va: u64,
    req: Request,
    ad: AdUpdate,
) -> Result<Translation, WalkFault> {
    walk_words(&mut mem::Words::new(mem), start, levels, va, req, ad)
}

/// The walk itself, on a memory view that may stay warm across walks.
///
/// A fast path handles the common case, every entry present and free of
/// reserved bits, A already set on the upper levels and the request
/// allowed, with the levels unrolled and the checks of one entry folded
/// into one test. Anything else (a fault, an upper entry without A, a
/// failed compare-exchange, a table outside the cached region) goes to
/// the general walk, which starts over and decides; both follow
/// docs/amd-iommu.md §3.2-§3.4 and give the same result for the same
/// entries (the tests and the walker fuzz target compare them).
#[inline(always)]
pub fn walk_words(
    words: &mut mem::Words<'_>,
    start: Start,
    levels: u8,
    va: u64,
    req: Request,
    ad: AdUpdate,
) -> Result<Translation, WalkFault> {
    if !canonical(va, levels) {
        return Err(WalkFault::NonCanonical);
    }
    match fast(words, start, va, req, ad) {
        Ok(t) => Ok(t),
        Err(restarts) => walk_general(words, start, va, req, ad, restarts),
    }
}

/// The general walk alone, without the fast path: for the tests and the
/// walker fuzz target, which compare the two.
pub fn walk_words_general(
    words: &mut mem::Words<'_>,
    start: Start,
    levels: u8,
    va: u64,
    req: Request,
    ad: AdUpdate,
) -> Result<Translation, WalkFault> {
    if !canonical(va, levels) {
        return Err(WalkFault::NonCanonical);
    }
    walk_general(words, start, va, req, ad, 0)
}

/// The fast path's answer when it cannot finish: take the general walk,
/// `restarts` compare-exchanges having failed so far.
type Slow = u32;

/// One entry on the fast path: its word, GPA and value.
#[inline(always)]
fn fast_read<'a>(
    win: &mem::Window<'a>,
    table: u64,
    va: u64,
    level: u8,
) -> Result<(&'a AtomicU64, u64, u64), Slow> {
    let gpa = table + 8 * index(va, level);
    let word = win.get(gpa).ok_or(0u32)?;
    Ok((word, gpa, word.load(Ordering::Acquire)))
}

#[inline(always)]
fn fast(
    words: &mut mem::Words<'_>,
    start: Start,
    va: u64,
    req: Request,
    ad: AdUpdate,
) -> Result<Translation, Slow> {
    if start.table & 0xfff != 0 {
        return Err(0);
    }
    // The cached region, kept in registers: a table outside it takes the
    // general walk, which moves the cache there.
    let win = words.window_or_fill(start.table);
    // A table entry must have P (and A when the walk updates) set, no
    // reserved PA bit and PS clear (reserved in a PML5E/PML4E, a leaf in a
    // PDPTE/PDE): one masked compare.
    let need = match ad {
        AdUpdate::Update(_) => PTE_P | PTE_A,
        AdUpdate::ReadOnly => PTE_P,
    };
    let table_mask = need | RESERVED_PA | PTE_PS;
    // The upper entries' values from the top; their addresses and the
    // permissions are worked out at the leaf.
    let mut up = [0u64; 4];
    let mut table = start.table;
    // The levels unrolled, one sequence per top level, so that shifts,
    // masks and the upper entries' slots are constants.
    macro_rules! table {
        ($level:literal, $slot:literal) => {{
            let (_, _, e) = fast_read(&win, table, va, $level)?;
            if e & table_mask != need {
                return Err(0);
            }
            up[$slot] = e;
            table = e & ADDR_MASK;
        }};
    }
    macro_rules! table_or_leaf {
        ($level:literal, $slot:literal) => {{
            let (word, gpa, e) = fast_read(&win, table, va, $level)?;
            if e & PTE_PS != 0 {
                return fast_leaf(word, &up, $slot, $level, gpa, e, start, va, req, ad);
            }
            if e & table_mask != need {
                return Err(0);
            }
            up[$slot] = e;
            table = e & ADDR_MASK;
        }};
    }
    macro_rules! leaf {
        ($slot:literal) => {{
            let (word, gpa, e) = fast_read(&win, table, va, 1)?;
            fast_leaf(word, &up, $slot, 1, gpa, e, start, va, req, ad)
        }};
    }
    // The usual starts first: from the top, or a walk-cache hit on a PDE.
    match start.level {
        4 => {
            table!(4, 0);
            table_or_leaf!(3, 1);
            table_or_leaf!(2, 2);
            leaf!(3)
        }
        1 => leaf!(0),
        5 => {
            table!(5, 0);
            table!(4, 1);
            table_or_leaf!(3, 2);
            table_or_leaf!(2, 3);
            leaf!(4)
        }
        3 => {
            table_or_leaf!(3, 0);
            table_or_leaf!(2, 1);
            leaf!(2)
        }
        2 => {
            table_or_leaf!(2, 0);
            leaf!(1)
        }
        _ => Err(0),
    }
}

/// The leaf on the fast path: checks, permissions, the A/D update, and the
/// translation with the upper entries (`up[..nuppers]`, the rest 0).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fast_leaf(
    word: &AtomicU64,
    up: &[u64; 4],
    nuppers: usize,
    level: u8,
    gpa: u64,
    e: u64,
    start: Start,
    va: u64,
    req: Request,
    ad: AdUpdate,
) -> Result<Translation, Slow> {
    if (!e & PTE_P) | reserved_bits(e, level) != 0 {
        return Err(0);
    }
    let uppers = &up[..nuppers];
    // R/W and U/S ANDed over the levels, NX ORed.
    let (and, or) = uppers.iter().fold((e, e), |(a, o), v| (a & v, o | v));
    let perms = Perms {
        write: start.perms.write && and & PTE_RW != 0,
        user: start.perms.user && and & PTE_US != 0,
        nx: start.perms.nx || or & PTE_NX != 0,
    };
    if !perms.allow(&req) {
        return Err(0);
    }
    let mut leaf = e;
    if let AdUpdate::Update(dirty) = ad {
        let want_d = match dirty {
            Dirty::Never => false,
            Dirty::OnWrite => req.write,
            Dirty::IfWritable => perms.write,
        };
        let new = e | PTE_A | if want_d { PTE_D } else { 0 };
        if new != e {
            match word.compare_exchange(e, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => leaf = new,
                // The entry changed: the general walk starts over.
                Err(_) => return Err(1),
            }
        }
    }
    let size_log2 = 12 + 9 * (level - 1);
    let page_mask = !((1u64 << size_log2) - 1);
    Ok(Translation {
        va_base: va & page_mask,
        pa_base: e & ADDR_MASK & page_mask,
        leaf_gpa: gpa,
        leaf,
        start_table: start.table,
        upper_values: *up,
        size_log2,
        perms,
        dirty: leaf & PTE_D != 0,
        nuppers: nuppers as u8,
    })
}

/// The general walk: every case, restarting when an entry changed under
/// its compare-exchange.
#[inline(never)]
fn walk_general(
    words: &mut mem::Words<'_>,
    start: Start,
    va: u64,
    req: Request,
    ad: AdUpdate,
    mut restarts: u32,
) -> Result<Translation, WalkFault> {
    'restart: loop {
        let mut table = start.table;
        let mut perms = start.perms;
        let mut upper_values = [0u64; 4];
        let mut nuppers = 0u8;
        let mut level = start.level;
        loop {
            let gpa = table + 8 * index(va, level);
            let e = words.load(gpa).map_err(|_| WalkFault::Memory { gpa })?;
            if e & PTE_P == 0 {
                return Err(WalkFault::NotPresent { level });
            }
            let rsvd = reserved_bits(e, level);
            if rsvd != 0 {
                return Err(WalkFault::Reserved {
                    level,
                    gpa,
                    entry: e,
                });
            }
            perms = perms.and_entry(e);
            let leaf = level == 1 || (e & PTE_PS != 0 && level <= 3);
            if !leaf {
                if let AdUpdate::Update(_) = ad {
                    if e & PTE_A == 0
                        && words
                            .cmpxchg(gpa, e, e | PTE_A)
                            .map_err(|_| WalkFault::Memory { gpa })?
                            .is_err()
                    {
                        restarts += 1;
                        if restarts > MAX_RESTARTS {
                            return Err(WalkFault::NotPresent { level });
                        }
                        continue 'restart;
                    }
                }
                upper_values[nuppers as usize] = e | if matches!(ad, AdUpdate::Update(_)) {
                    PTE_A
                } else {
                    0
                };
                nuppers += 1;
                table = e & ADDR_MASK;
                level -= 1;
                continue;
            }
            if !perms.allow(&req) {
                return Err(WalkFault::Permission { perms });
            }
            let size_log2 = 12 + 9 * (level - 1);
            let mut leaf_val = e;
            if let AdUpdate::Update(dirty) = ad {
                let want_d = match dirty {
                    Dirty::Never => false,
                    Dirty::OnWrite => req.write,
                    Dirty::IfWritable => perms.write,
                };
                let new = e | PTE_A | if want_d { PTE_D } else { 0 };
                if new != e {
                    // The compare-exchange re-checks P and the permission
                    // bits: any change to the entry restarts the walk.
                    match words
                        .cmpxchg(gpa, e, new)
                        .map_err(|_| WalkFault::Memory { gpa })?
                    {
                        Ok(_) => leaf_val = new,
                        Err(_) => {
                            restarts += 1;
                            if restarts > MAX_RESTARTS {
                                return Err(WalkFault::NotPresent { level });
                            }
                            continue 'restart;
                        }
                    }
                }
            }
            let page_mask = !((1u64 << size_log2) - 1);
            return Ok(Translation {
                va_base: va & page_mask,
                pa_base: e & ADDR_MASK & page_mask,
                leaf_gpa: gpa,
                leaf: leaf_val,
                start_table: start.table,
                upper_values,
                size_log2,
                perms,
                dirty: leaf_val & PTE_D != 0,
                nuppers,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pgtable::{Tables, DIR};

    const USER_RW: u64 = PTE_P | PTE_RW | PTE_US;
    const RD: Request = Request {
        write: false,
        exec: false,
        privileged: false,
    };
    const WR: Request = Request {
        write: true,
        exec: false,
        privileged: false,
    };
    const UPD: AdUpdate = AdUpdate::Update(Dirty::OnWrite);

    #[test]
    fn four_and_five_level_each_page_size() {
        let mem = mem::anon(0x400_0000);
        for levels in [4u8, 5] {
            let mut t = Tables::new(&mem, levels, 0x10_0000 * u64::from(levels));
            let va4k = 0x7f12_3456_7000u64;
            let va2m = 0x7f00_0020_0000u64;
            let va1g = 0x40_0000_0000u64;
            t.map(va4k, 0x1234_5000, 1, USER_RW, DIR);
            t.map(va2m, 0x20_0000, 2, USER_RW, DIR);
            t.map(va1g, 0x4000_0000, 3, USER_RW, DIR);
            let w = walk(&mem, t.cr3, levels, va4k + 0x123, RD, UPD).unwrap();
            assert_eq!(
                (w.pa(va4k + 0x123), w.size_log2, w.nuppers),
                (0x1234_5123, 12, levels - 1)
            );
            let w = walk(&mem, t.cr3, levels, va2m + 0x1_2345, RD, UPD).unwrap();
            assert_eq!(
                (w.pa(va2m + 0x1_2345), w.size_log2, w.nuppers),
                (0x21_2345, 21, levels - 2)
            );
            let w = walk(&mem, t.cr3, levels, va1g + 0x123_4567, RD, UPD).unwrap();
            assert_eq!(
                (w.pa(va1g + 0x123_4567), w.size_log2, w.nuppers),
                (0x4123_4567, 30, levels - 3)
            );
            assert_eq!(
                walk(&mem, t.cr3, levels, va4k + 0x1000, RD, UPD),
                Err(WalkFault::NotPresent { level: 1 })
            );
        }
        // A 5-level-only address (bit 47 set, below 2^56) in both modes.
        let mut t = Tables::new(&mem, 5, 0x200_0000);
        let high = 0x00ff_0000_0000_0000u64;
        t.map(high, 0x5000, 1, USER_RW, DIR);
        assert_eq!(walk(&mem, t.cr3, 5, high, RD, UPD).unwrap().pa_base, 0x5000);
        assert_eq!(
            walk(&mem, t.cr3, 4, high, RD, UPD),
            Err(WalkFault::NonCanonical)
        );
    }

    #[test]
    fn non_canonical() {
        let mem = mem::anon(0x10_0000);
        for (va, levels, ok) in [
            (0x0000_7fff_ffff_f000u64, 4u8, true),
            (0x0000_8000_0000_0000, 4, false),
            (0xffff_8000_0000_0000, 4, true),
            (0x0100_0000_0000_0000, 5, false),
            (0xff00_0000_0000_0000, 5, true),
        ] {
            assert_eq!(canonical(va, levels), ok, "{va:#x}/{levels}");
            let r = walk(&mem, 0x1000, levels, va, RD, UPD);
            assert_eq!(r == Err(WalkFault::NonCanonical), !ok);
        }
    }

    /// Every row of the permission rules: per-level R/W, U/S, NX for user and
    /// supervisor read, write and execute requests.
    #[test]
    fn permission_rules() {
        let mem = mem::anon(0x100_0000);
        let va = 0x7f00_1234_5000u64;
        for level in 1..=4u8 {
            for (clear, set) in [(PTE_RW, 0), (PTE_US, 0), (0, PTE_NX), (0, 0)] {
                let mut t = Tables::new(&mem, 4, 0x10_0000 + 0x10_0000 * u64::from(level));
                let leaf = t.map(va, 0x8000, 1, USER_RW, DIR);
                let gpa = if level == 1 {
                    leaf
                } else {
                    t.entry_gpa(va, level)
                };
                let e = mem::load_u64(&mem, gpa).unwrap();
                mem::store_u64(&mem, gpa, (e & !clear) | set).unwrap();
                for privileged in [false, true] {
                    for (write, exec) in [(false, false), (true, false), (false, true)] {
                        let req = Request {
                            write,
                            exec,
                            privileged,
                        };
                        let expect = (privileged || clear != PTE_US)
                            && (!write || clear != PTE_RW)
                            && (!exec || set != PTE_NX);
                        let r = walk(&mem, t.cr3, 4, va, req, AdUpdate::ReadOnly);
                        assert_eq!(
                            r.is_ok(),
                            expect,
                            "level {level} clear {clear:#x} set {set:#x} {req:?}"
                        );
                        if !expect {
                            assert!(matches!(r, Err(WalkFault::Permission { .. })));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn reserved_bits_fault_rz() {
        let mem = mem::anon(0x100_0000);
        let va = 0x7f00_0000_0000u64;
        let cases: [(u8, u8, u64); 6] = [
            (4, 4, PTE_PS),  // PS in PML4E
            (5, 5, PTE_PS),  // PS in PML5E
            (4, 1, 1 << 50), // reserved PA bit in a PTE
            (4, 3, 1 << 49), // reserved PA bit in a PDPTE
            (4, 2, 0),       // misaligned 2 MiB leaf (set below)
            (4, 3, 0),       // misaligned 1 GiB leaf
        ];
        for (i, (levels, level, bits)) in cases.into_iter().enumerate() {
            let mut t = Tables::new(&mem, levels, 0x10_0000 * (i as u64 + 1));
            let leaf_level = if bits == 0 { level } else { 1 };
            let pa = if bits == 0 {
                0x20_0000 + 0x2000
            } else {
                0x20_0000
            };
            t.map(va, pa, leaf_level, USER_RW, DIR);
            if bits != 0 {
                let gpa = t.entry_gpa(va, level);
                let e = mem::load_u64(&mem, gpa).unwrap();
                mem::store_u64(&mem, gpa, e | bits).unwrap();
            }
            let r = walk(&mem, t.cr3, levels, va, RD, UPD);
            assert!(
                matches!(r, Err(WalkFault::Reserved { level: l, .. }) if l == level),
                "case {i}: {r:?}"
            );
        }
        // PAT (bit 12) in a 2 MiB leaf is not reserved; a P=0 entry's other bits are ignored.
        let mut t = Tables::new(&mem, 4, 0x80_0000);
        t.map(va, 0x20_0000 | 0x1000, 2, USER_RW, DIR);
        assert!(walk(&mem, t.cr3, 4, va, RD, UPD).is_ok());
        let gpa = t.map(va + 0x40_0000, 1 << 50, 2, 0, DIR);
        assert_eq!(mem::load_u64(&mem, gpa).unwrap() & PTE_P, 0);
        assert_eq!(
            walk(&mem, t.cr3, 4, va + 0x40_0000, RD, UPD),
            Err(WalkFault::NotPresent { level: 2 })
        );
    }

    #[test]
    fn accessed_and_dirty() {
        let mem = mem::anon(0x100_0000);
        let va = 0x7f00_0000_1000u64;
        let mut t = Tables::new(&mem, 4, 0x10_0000);
        let leaf = t.map(va, 0x8000, 1, USER_RW, DIR);
        // Read-only oracle walk changes nothing.
        walk(&mem, t.cr3, 4, va, RD, AdUpdate::ReadOnly).unwrap();
        assert_eq!(mem::load_u64(&mem, leaf).unwrap() & (PTE_A | PTE_D), 0);
        for l in 2..=4 {
            assert_eq!(mem::load_u64(&mem, t.entry_gpa(va, l)).unwrap() & PTE_A, 0);
        }
        // A read sets A on every level, not D.
        let w = walk(&mem, t.cr3, 4, va, RD, UPD).unwrap();
        assert!(!w.dirty);
        assert_eq!(mem::load_u64(&mem, leaf).unwrap() & (PTE_A | PTE_D), PTE_A);
        for l in 2..=4 {
            assert_ne!(
                mem::load_u64(&mem, t.entry_gpa(va, l)).unwrap() & PTE_A,
                0,
                "level {l}"
            );
        }
        // A write sets D.
        assert!(walk(&mem, t.cr3, 4, va, WR, UPD).unwrap().dirty);
        assert_ne!(mem::load_u64(&mem, leaf).unwrap() & PTE_D, 0);
        // An ATS-style walk grants write and sets D only when writable.
        let leaf2 = t.map(va + 0x1000, 0x9000, 1, PTE_P | PTE_US, DIR);
        let w = walk(
            &mem,
            t.cr3,
            4,
            va + 0x1000,
            RD,
            AdUpdate::Update(Dirty::IfWritable),
        )
        .unwrap();
        assert!(!w.perms.write && !w.dirty);
        assert_eq!(mem::load_u64(&mem, leaf2).unwrap() & PTE_D, 0);
        let leaf3 = t.map(va + 0x2000, 0xa000, 1, USER_RW, DIR);
        assert!(
            walk(
                &mem,
                t.cr3,
                4,
                va + 0x2000,
                RD,
                AdUpdate::Update(Dirty::IfWritable)
            )
            .unwrap()
            .dirty
        );
        assert_ne!(mem::load_u64(&mem, leaf3).unwrap() & PTE_D, 0);
        // Never: NW=1 leaves D alone.
        let leaf4 = t.map(va + 0x3000, 0xb000, 1, USER_RW, DIR);
        walk(
            &mem,
            t.cr3,
            4,
            va + 0x3000,
            RD,
            AdUpdate::Update(Dirty::Never),
        )
        .unwrap();
        assert_eq!(mem::load_u64(&mem, leaf4).unwrap() & PTE_D, 0);
    }

    /// An entry that changes between the read and the compare-exchange makes
    /// the walker restart and use the new value; a permission lost in the
    /// meantime is honoured, never overwritten.
    #[test]
    fn entry_changed_during_update() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let mem = Arc::new(mem::anon(0x100_0000));
        let va = 0x7f00_0000_1000u64;
        let mut t = Tables::new(&mem, 4, 0x10_0000);
        let leaf = t.map(va, 0x8000, 1, USER_RW, DIR);
        let cr3 = t.cr3;
        let stop = Arc::new(AtomicBool::new(false));
        // A CPU thread flips the leaf between writable-clean and read-only.
        let cpu = {
            let (mem, stop) = (mem.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v = if n % 2 == 0 {
                        0x8000 | PTE_P | PTE_US
                    } else {
                        0x8000 | USER_RW
                    };
                    mem::store_u64(&mem, leaf, v).unwrap();
                    n += 1;
                }
            })
        };
        for _ in 0..20000 {
            match walk(&mem, cr3, 4, va, WR, UPD) {
                Ok(w) => assert!(w.perms.write && w.dirty && w.leaf & PTE_RW != 0),
                Err(e) => assert!(matches!(
                    e,
                    WalkFault::Permission { .. } | WalkFault::NotPresent { .. }
                )),
            }
            // D must never be set on a read-only leaf.
            let e = mem::load_u64(&mem, leaf).unwrap();
            assert!(
                !(e & PTE_D != 0 && e & PTE_RW == 0),
                "D set on a read-only entry: {e:#x}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        cpu.join().unwrap();
        // Deterministic check of the restart path: the first cmpxchg fails.
        let e = mem::load_u64(&mem, leaf).unwrap();
        mem::store_u64(&mem, leaf, e & !(PTE_A | PTE_D)).unwrap();
        assert_eq!(
            mem::cmpxchg_u64(&mem, leaf, 0, 1).unwrap(),
            Err(e & !(PTE_A | PTE_D))
        );
    }

    /// The fast path itself finishes the common walks (every page size,
    /// every starting level, every A/D mode once A is set above the leaf),
    /// with the general walk's result, and gives up on the rest.
    #[test]
    fn fast_path_takes_hot_walks() {
        let mem = mem::anon(0x400_0000);
        for levels in [4u8, 5] {
            let mut t = Tables::new(&mem, levels, 0x10_0000 * u64::from(levels));
            let vas = [
                (0x7f12_3456_7000u64, 1u8),
                (0x7f00_0020_0000, 2),
                (0x40_0000_0000, 3),
            ];
            for (va, leaf) in vas {
                t.map(va, 0x4000_0000 >> (3 - leaf), leaf, USER_RW, DIR);
                // A general walk sets A above the leaf.
                walk(&mem, t.cr3, levels, va, RD, UPD).unwrap();
                for from in leaf..=levels {
                    let table = if from == levels {
                        t.cr3
                    } else {
                        t.get(va, from + 1) & ADDR_MASK
                    };
                    let start = Start {
                        level: from,
                        table,
                        perms: Perms::ALL,
                    };
                    for ad in [
                        AdUpdate::ReadOnly,
                        AdUpdate::Update(Dirty::Never),
                        UPD,
                        AdUpdate::Update(Dirty::IfWritable),
                    ] {
                        let mut w = mem::Words::new(&mem);
                        let f = fast(&mut w, start, va, WR, ad);
                        let g = walk_words_general(&mut w, start, levels, va, WR, ad);
                        assert_eq!(f.ok(), g.ok(), "levels {levels} leaf {leaf} from {from}");
                        assert_eq!(
                            f.unwrap().uppers().count(),
                            usize::from(from - leaf),
                            "levels {levels} leaf {leaf} from {from}"
                        );
                    }
                }
                // Faults and A=0 above the leaf take the general walk.
                let gpa = t.entry_gpa(va, leaf + 1);
                let e = mem::load_u64(&mem, gpa).unwrap();
                let top = Start {
                    level: levels,
                    table: t.cr3,
                    perms: Perms::ALL,
                };
                let mut w = mem::Words::new(&mem);
                mem::store_u64(&mem, gpa, e & !PTE_A).unwrap();
                assert_eq!(fast(&mut w, top, va, RD, UPD).err(), Some(0));
                assert!(fast(&mut w, top, va, RD, AdUpdate::ReadOnly).is_ok());
                mem::store_u64(&mem, gpa, e & !PTE_RW).unwrap();
                assert_eq!(fast(&mut w, top, va, WR, UPD).err(), Some(0));
                mem::store_u64(&mem, gpa, e | 1 << 50).unwrap();
                assert_eq!(fast(&mut w, top, va, RD, UPD).err(), Some(0));
                mem::store_u64(&mem, gpa, e).unwrap();
            }
        }
    }

    /// The uppers of a translation: levels from the top down, the address
    /// of each entry in the table above it, the values the walk read.
    #[test]
    fn uppers_levels_and_addresses() {
        let mem = mem::anon(0x100_0000);
        let va = 0x7f12_3456_7000u64;
        let mut t = Tables::new(&mem, 5, 0x10_0000);
        t.map(va, 0x8000, 1, USER_RW, DIR);
        let w = walk(&mem, t.cr3, 5, va, RD, UPD).unwrap();
        let got: Vec<Upper> = w.uppers().collect();
        let want: Vec<Upper> = (2..=5u8)
            .rev()
            .map(|level| Upper {
                level,
                gpa: t.entry_gpa(va, level),
                value: t.get(va, level),
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!((w.leaf_gpa, w.leaf), (t.entry_gpa(va, 1), t.get(va, 1)));
    }

    #[test]
    fn table_outside_ram_is_memory_fault() {
        let mem = mem::anon(0x10_0000);
        let mut t = Tables::new(&mem, 4, 0x1000);
        t.map(0x1000, 0x2000, 1, USER_RW, DIR);
        let pde = t.entry_gpa(0x1000, 2);
        mem::store_u64(&mem, pde, 0x7000_0000 | DIR).unwrap();
        assert!(
            matches!(walk(&mem, t.cr3, 4, 0x1000, RD, UPD), Err(WalkFault::Memory { gpa }) if gpa >= 0x7000_0000)
        );
        assert!(matches!(
            walk(&mem, 0x4000_0000, 4, 0x1000, RD, UPD),
            Err(WalkFault::Memory { .. })
        ));
    }
}
