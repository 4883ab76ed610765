//! IOMMU-side caches: the IOTLB (leaf translations), the page-walk cache
//! (upper-level entries) and the DTE cache. Invalidation follows the command
//! fields exactly (§4.3): what must go goes, what must stay stays.

use std::collections::VecDeque;
use std::hash::Hash;

use rustc_hash::FxHashMap;

use crate::srange::SRange;
use crate::walker::{Perms, Start, Translation, Upper};

/// A bounded map with FIFO replacement, the storage of every cache here.
/// The queue is lazy: an item names the insertion it came from, so stale
/// items (entries removed or replaced since) are skipped, never counted.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    capacity: usize,
    map: FxHashMap<K, (V, u64)>,
    fifo: VecDeque<(K, u64)>,
    seq: u64,
}

impl<K: Copy + Eq + Hash, V> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedMap {
            capacity,
            map: FxHashMap::default(),
            fifo: VecDeque::new(),
            seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    #[inline]
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    /// Insert or replace; evicts the oldest entries beyond the capacity.
    pub fn insert(&mut self, k: K, v: V) {
        if self.capacity == 0 {
            return;
        }
        self.seq += 1;
        self.map.insert(k, (v, self.seq));
        self.fifo.push_back((k, self.seq));
        while self.map.len() > self.capacity {
            let Some((k, s)) = self.fifo.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, cur)| *cur == s) {
                self.map.remove(&k);
            }
        }
        if self.fifo.len() > 2 * self.capacity + 16 {
            let map = &self.map;
            self.fifo
                .retain(|(k, s)| map.get(k).is_some_and(|(_, cur)| cur == s));
        }
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }

    /// Keep the entries for which `f` is true; returns how many went.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &V) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|k, (v, _)| f(k, v));
        before - self.map.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, (v, _))| (k, v))
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.fifo.clear();
    }
}

/// Remove the entries of one page size overlapping `range` from a map keyed
/// by `key(page number)`: probe each page when the range is smaller than the
/// map, scan otherwise. Single-page cost does not depend on the cache size.
pub fn remove_range<K: Copy + Eq + Hash, V>(
    m: &mut BoundedMap<K, V>,
    range: &SRange,
    shift: u8,
    key: impl Fn(u64) -> K,
    in_scope: impl Fn(&K) -> Option<u64>,
) -> usize {
    let (first, last) = (range.base >> shift, range.last() >> shift);
    if last - first < m.len() as u64 {
        (first..=last)
            .filter(|pn| m.remove(&key(*pn)).is_some())
            .count()
    } else {
        m.retain(|k, _| !in_scope(k).is_some_and(|pn| (first..=last).contains(&pn)))
    }
}

/// IOTLB tag: guest translations are per (DomainID, PASID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    pub domain_id: u16,
    pub pasid: u32,
}

/// A cache key in two words, so that a lookup hashes and compares two
/// fields, not four: domain ID (bits 63:48), page size or level (47:40) and
/// PASID (31:0), then the page number (or VA prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    hi: u64,
    pn: u64,
}

impl Key {
    #[inline]
    pub fn new(tag: Tag, sub: u8, pn: u64) -> Key {
        Key {
            hi: u64::from(tag.domain_id) << 48 | u64::from(sub) << 40 | u64::from(tag.pasid),
            pn,
        }
    }

    pub fn tag(&self) -> Tag {
        Tag {
            domain_id: (self.hi >> 48) as u16,
            pasid: self.hi as u32,
        }
    }

    /// The page size (IOTLB, ATC) or level (walk cache).
    pub fn sub(&self) -> u8 {
        (self.hi >> 40) as u8
    }

    pub fn pn(&self) -> u64 {
        self.pn
    }
}

/// A cached leaf translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbEntry {
    pub va_base: u64,
    pub pa_base: u64,
    pub size_log2: u8,
    pub perms: Perms,
    pub dirty: bool,
}

impl From<&Translation> for TlbEntry {
    fn from(t: &Translation) -> Self {
        TlbEntry {
            va_base: t.va_base,
            pa_base: t.pa_base,
            size_log2: t.size_log2,
            perms: t.perms,
            dirty: t.dirty,
        }
    }
}

/// Leaf sizes: 4 KiB, 2 MiB, 1 GiB.
pub const SIZES: [u8; 3] = [12, 21, 30];

/// IOTLB: leaf translations keyed by (tag, page size, page number).
#[derive(Debug)]
pub struct Iotlb {
    map: BoundedMap<Key, TlbEntry>,
}

impl Iotlb {
    pub fn new(capacity: usize) -> Self {
        Iotlb {
            map: BoundedMap::new(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    #[inline]
    pub fn lookup(&self, tag: Tag, va: u64) -> Option<TlbEntry> {
        SIZES
            .iter()
            .find_map(|&s| self.map.get(&Key::new(tag, s, va >> s)).copied())
    }

    pub fn insert(&mut self, tag: Tag, e: TlbEntry) {
        self.map
            .insert(Key::new(tag, e.size_log2, e.va_base >> e.size_log2), e);
    }

    /// INVALIDATE_IOMMU_PAGES for guest translations of (DomainID, PASID).
    pub fn invalidate(&mut self, tag: Tag, range: &SRange) -> usize {
        if range.is_everything() {
            return self.map.retain(|k, _| k.tag() != tag);
        }
        SIZES
            .iter()
            .map(|&s| {
                remove_range(
                    &mut self.map,
                    range,
                    s,
                    |pn| Key::new(tag, s, pn),
                    |k| (k.tag() == tag && k.sub() == s).then_some(k.pn()),
                )
            })
            .sum()
    }

    /// Every entry of a domain (any PASID).
    pub fn invalidate_domain(&mut self, domain_id: u16) -> usize {
        self.map.retain(|k, _| k.tag().domain_id != domain_id)
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// All entries of `pasid` overlapping `[va, va+len)` (for the audit).
    pub fn entries(&self, pasid: u32, va: u64, len: u64) -> Vec<(Tag, TlbEntry)> {
        let range_last = va.saturating_add(len.max(1) - 1);
        self.map
            .iter()
            .filter(|(k, e)| {
                k.tag().pasid == pasid
                    && e.va_base <= range_last
                    && va <= e.va_base + ((1u64 << e.size_log2) - 1)
            })
            .map(|(k, e)| (k.tag(), *e))
            .collect()
    }
}

/// A cached upper-level entry: the table it points to and the permissions
/// accumulated down to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PwcEntry {
    pub entry: Upper,
    pub next_table: u64,
    pub perms: Perms,
}

/// Page-walk cache keyed by (tag, level of the cached entry, VA prefix).
#[derive(Debug)]
pub struct Pwc {
    map: BoundedMap<Key, PwcEntry>,
}

/// VA bits covered by one entry at `level` (PDE: 21, PDPTE: 30, ...).
fn covers_log2(level: u8) -> u8 {
    12 + 9 * (level - 1)
}

const TABLE_ADDR: u64 = ((1u64 << 52) - 1) & !0xfff;

impl Pwc {
    pub fn new(capacity: usize) -> Self {
        Pwc {
            map: BoundedMap::new(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The deepest cached table on the way to `va`, as a walk start.
    pub fn lookup(&self, tag: Tag, va: u64, levels: u8) -> Option<Start> {
        (2..=levels).find_map(|level| {
            self.map
                .get(&Key::new(tag, level, va >> covers_log2(level)))
                .map(|e| Start {
                    level: level - 1,
                    table: e.next_table,
                    perms: e.perms,
                })
        })
    }

    /// Cache the upper-level entries of a completed walk.
    pub fn insert_walk(
        &mut self,
        tag: Tag,
        va: u64,
        start_perms: Perms,
        uppers: impl IntoIterator<Item = Upper>,
    ) {
        let mut perms = start_perms;
        for u in uppers {
            perms = Perms {
                write: perms.write && u.value & crate::walker::PTE_RW != 0,
                user: perms.user && u.value & crate::walker::PTE_US != 0,
                nx: perms.nx || u.value & crate::walker::PTE_NX != 0,
            };
            let e = PwcEntry {
                entry: u,
                next_table: u.value & TABLE_ADDR,
                perms,
            };
            self.map
                .insert(Key::new(tag, u.level, va >> covers_log2(u.level)), e);
        }
    }

    /// PDE=1 invalidation of entries whose VA span overlaps `range`.
    pub fn invalidate(&mut self, tag: Tag, range: &SRange) -> usize {
        if range.is_everything() {
            return self.map.retain(|k, _| k.tag() != tag);
        }
        (2..=5u8)
            .map(|l| {
                let shift = covers_log2(l);
                remove_range(
                    &mut self.map,
                    range,
                    shift,
                    |p| Key::new(tag, l, p),
                    |k| (k.tag() == tag && k.sub() == l).then_some(k.pn()),
                )
            })
            .sum()
    }

    pub fn invalidate_domain(&mut self, domain_id: u16) -> usize {
        self.map.retain(|k, _| k.tag().domain_id != domain_id)
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Entries of `pasid` whose span overlaps `[va, va+len)` with their VA base.
    pub fn entries(&self, pasid: u32, va: u64, len: u64) -> Vec<(Tag, u64, PwcEntry)> {
        let r_last = va.saturating_add(len.max(1) - 1);
        self.map
            .iter()
            .filter(|(k, _)| k.tag().pasid == pasid)
            .filter_map(|(k, e)| {
                let base = k.pn() << covers_log2(k.sub());
                let last = base.saturating_add((1u64 << covers_log2(k.sub())) - 1);
                (base <= r_last && va <= last).then_some((k.tag(), base, *e))
            })
            .collect()
    }
}

/// Bounded DTE cache keyed by device id.
#[derive(Debug)]
pub struct DteCache<T: Copy> {
    capacity: usize,
    map: FxHashMap<u16, T>,
}

impl<T: Copy> DteCache<T> {
    pub fn new(capacity: usize) -> Self {
        DteCache {
            capacity,
            map: FxHashMap::default(),
        }
    }

    pub fn get(&self, devid: u16) -> Option<T> {
        self.map.get(&devid).copied()
    }

    pub fn insert(&mut self, devid: u16, v: T) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(&devid) {
            if let Some(k) = self.map.keys().next().copied() {
                self.map.remove(&k);
            }
        }
        self.map.insert(devid, v);
    }

    pub fn invalidate(&mut self, devid: u16) -> bool {
        self.map.remove(&devid).is_some()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: Tag = Tag {
        domain_id: 1,
        pasid: 5,
    };
    const T2: Tag = Tag {
        domain_id: 1,
        pasid: 6,
    };
    const T3: Tag = Tag {
        domain_id: 2,
        pasid: 5,
    };

    fn e(va: u64, size_log2: u8) -> TlbEntry {
        TlbEntry {
            va_base: va,
            pa_base: va ^ 0x1_0000_0000,
            size_log2,
            perms: Perms::ALL,
            dirty: false,
        }
    }

    #[test]
    fn lookup_each_size() {
        let mut t = Iotlb::new(16);
        t.insert(T1, e(0x1000, 12));
        t.insert(T1, e(0x20_0000, 21));
        t.insert(T1, e(0x4000_0000, 30));
        assert_eq!(t.lookup(T1, 0x1fff).unwrap().va_base, 0x1000);
        assert_eq!(t.lookup(T1, 0x3f_ffff).unwrap().size_log2, 21);
        assert_eq!(t.lookup(T1, 0x7fff_ffff).unwrap().size_log2, 30);
        assert!(t.lookup(T1, 0x2000).is_none());
        assert!(t.lookup(T2, 0x1000).is_none());
        assert!(t.lookup(T3, 0x1000).is_none());
    }

    /// Invalidation precision: the range, the PASID and the domain select
    /// exactly the entries that overlap; large pages overlapping a small range go.
    #[test]
    fn invalidation_precision() {
        let mut t = Iotlb::new(64);
        for tag in [T1, T2, T3] {
            t.insert(tag, e(0x1000, 12));
            t.insert(tag, e(0x2000, 12));
            t.insert(tag, e(0x3000, 12));
            t.insert(tag, e(0x20_0000, 21));
        }
        assert_eq!(t.len(), 12);
        // Single page 0x2000 of T1.
        assert_eq!(t.invalidate(T1, &SRange::decode(0x2000, false)), 1);
        assert!(t.lookup(T1, 0x2000).is_none());
        assert!(t.lookup(T1, 0x1000).is_some() && t.lookup(T1, 0x3000).is_some());
        assert!(t.lookup(T2, 0x2000).is_some() && t.lookup(T3, 0x2000).is_some());
        // 8 KiB range 0x0..0x2000 of T2 removes 0x1000 only (0x0 not cached).
        assert_eq!(t.invalidate(T2, &SRange::decode(0x0000, true)), 1);
        assert!(t.lookup(T2, 0x1000).is_none() && t.lookup(T2, 0x3000).is_some());
        // A 4 KiB range inside a cached 2 MiB page removes the large page.
        assert_eq!(t.invalidate(T3, &SRange::decode(0x21_0000, false)), 1);
        assert!(t.lookup(T3, 0x20_0000).is_none() && t.lookup(T3, 0x1000).is_some());
        // Everything for T1.
        assert_eq!(t.invalidate(T1, &SRange::EVERYTHING), 3);
        assert!(t.lookup(T1, 0x1000).is_none());
        assert_eq!(t.len(), 12 - 1 - 1 - 1 - 3);
        assert_eq!(t.invalidate_domain(1), 3);
        assert_eq!(t.len(), 3);
        t.clear();
        assert!(t.is_empty());
    }

    #[test]
    fn bounded_fifo() {
        let mut t = Iotlb::new(4);
        for i in 0..10u64 {
            t.insert(T1, e(i << 12, 12));
        }
        assert_eq!(t.len(), 4);
        assert!(t.lookup(T1, 0).is_none());
        assert!(t.lookup(T1, 9 << 12).is_some());
        // Re-inserting the same page does not grow it.
        t.insert(T1, e(9 << 12, 12));
        assert_eq!(t.len(), 4);
    }

    /// Replacing one key over and over neither grows the queue nor evicts others.
    #[test]
    fn bounded_map_replacement_stays_bounded() {
        let mut m = BoundedMap::new(4);
        for k in 0..4u64 {
            m.insert(k, k);
        }
        for i in 0..10_000u64 {
            m.insert(2, i);
        }
        assert_eq!(m.len(), 4);
        assert!(m.fifo.len() <= 2 * 4 + 16 + 1, "queue {}", m.fifo.len());
        assert_eq!(m.get(&0), Some(&0));
        m.insert(9, 9);
        assert_eq!(m.get(&0), None, "oldest goes first");
        assert_eq!(m.get(&2), Some(&9999));
    }

    #[test]
    fn large_invalidation_scans_when_cheaper() {
        let mut t = Iotlb::new(1 << 17);
        for i in 0..1000u64 {
            t.insert(T1, e(i << 12, 12));
        }
        assert_eq!(t.invalidate(T1, &SRange::aligned(0, 40)), 1000);
        assert!(t.is_empty());
    }

    #[test]
    fn pwc_levels_and_pde_invalidation() {
        use crate::walker::{PTE_P, PTE_RW, PTE_US};
        let mut p = Pwc::new(64);
        let va = 0x7f00_0020_1000u64;
        let dir = PTE_P | PTE_RW | PTE_US;
        let uppers = [
            Upper {
                level: 4,
                gpa: 0x1000,
                value: 0x2000 | dir,
            },
            Upper {
                level: 3,
                gpa: 0x2000,
                value: 0x3000 | dir,
            },
            Upper {
                level: 2,
                gpa: 0x3000,
                value: 0x4000 | PTE_P | PTE_US,
            },
        ];
        p.insert_walk(T1, va, Perms::ALL, uppers);
        let s = p.lookup(T1, va, 4).unwrap();
        assert_eq!((s.level, s.table), (1, 0x4000));
        assert!(!s.perms.write, "RW=0 at level 2 is carried");
        // Another 2 MiB region under the same PDPT uses the level-3 entry.
        let s = p.lookup(T1, va + 0x20_0000, 4).unwrap();
        assert_eq!((s.level, s.table), (2, 0x3000));
        assert!(p.lookup(T2, va, 4).is_none());
        // A 4 KiB PDE=1 invalidation removes every level covering it.
        assert_eq!(p.invalidate(T1, &SRange::decode(va, false)), 3);
        assert!(p.lookup(T1, va, 4).is_none());
        p.insert_walk(T1, va, Perms::ALL, uppers);
        // A range elsewhere under the same 512 GiB only removes the level-4 entry.
        assert_eq!(
            p.invalidate(T1, &SRange::decode(0x7f40_0000_0000, false)),
            1
        );
        assert!(p.lookup(T1, va, 4).is_some());
    }

    #[test]
    fn dte_cache_bounded() {
        let mut c = DteCache::new(2);
        c.insert(1, 10u32);
        c.insert(2, 20);
        c.insert(3, 30);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(3), Some(30));
        assert!(c.invalidate(3));
        assert!(!c.invalidate(3));
    }
}
