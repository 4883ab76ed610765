//! PCIe ATS on the endpoint side (§8): translation completions, the device's
//! ATC, the in-flight tracking that makes an ATC invalidation wait for the
//! accesses still using it, and PRI page-request state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rustc_hash::FxHashMap;

use crate::cache::{remove_range, BoundedMap, Key, Tag, SIZES};
use crate::srange::SRange;

/// An ATS translation completion entry (§8.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AtsCompletion {
    pub r: bool,
    pub w: bool,
    /// Untranslated-only.
    pub u: bool,
    pub exe: bool,
    pub privileged: bool,
    pub global: bool,
    /// Translated (physical) base of the range.
    pub pa_base: u64,
    /// 12 for 4 KiB; larger ranges use the S encoding.
    pub size_log2: u8,
}

impl AtsCompletion {
    /// R=W=0: the translation failed; the device may use PRI.
    pub fn fault(size_log2: u8) -> Self {
        AtsCompletion {
            size_log2,
            ..Default::default()
        }
    }

    pub fn is_fault(&self) -> bool {
        !self.r && !self.w
    }

    pub fn allows(&self, write: bool) -> bool {
        if write {
            self.w
        } else {
            self.r
        }
    }

    /// Bits: 0 R, 1 W, 2 U, 3 Exe, 4 Priv, 5 Global, 11 S, 63:12 address.
    pub fn encode(&self) -> u64 {
        let (addr, s) = SRange::aligned(self.pa_base, self.size_log2).encode();
        let flags = u64::from(self.r)
            | u64::from(self.w) << 1
            | u64::from(self.u) << 2
            | u64::from(self.exe) << 3
            | u64::from(self.privileged) << 4
            | u64::from(self.global) << 5
            | u64::from(s) << 11;
        if self.is_fault() {
            flags & !(1 << 11)
        } else {
            (addr & !0xfff) | flags
        }
    }

    pub fn decode(v: u64) -> Self {
        let r = SRange::decode(v & !0xfff, v & (1 << 11) != 0);
        AtsCompletion {
            r: v & 1 != 0,
            w: v & 2 != 0,
            u: v & 4 != 0,
            exe: v & 8 != 0,
            privileged: v & 16 != 0,
            global: v & 32 != 0,
            pa_base: r.base,
            size_log2: r.size_log2().min(63),
        }
    }
}

/// A completion cached by the device, with the untranslated base it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtcEntry {
    pub pasid: u32,
    pub va_base: u64,
    pub completion: AtsCompletion,
}

impl AtcEntry {
    pub fn pa(&self, va: u64) -> u64 {
        self.completion.pa_base | (va & ((1u64 << self.completion.size_log2) - 1))
    }
}

/// The ATC's key: (PASID, range size, page number).
#[inline]
fn key(pasid: u32, size_log2: u8, pn: u64) -> Key {
    Key::new(
        Tag {
            domain_id: 0,
            pasid,
        },
        size_log2,
        pn,
    )
}

/// The device's address translation cache: bounded, FIFO replacement,
/// keyed by (PASID, range size, page number).
#[derive(Debug)]
pub struct Atc {
    map: BoundedMap<Key, AtcEntry>,
}

impl Atc {
    pub fn new(capacity: usize) -> Self {
        Atc {
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
    pub fn lookup(&self, pasid: u32, va: u64) -> Option<AtcEntry> {
        SIZES
            .iter()
            .find_map(|&s| self.map.get(&key(pasid, s, va >> s)).copied())
    }

    /// Store a successful completion. Completions larger than 1 GiB are
    /// cached as the 1 GiB slice containing `va` (a device may cache less
    /// than it was given).
    pub fn insert(&mut self, pasid: u32, va: u64, c: AtsCompletion) {
        if c.is_fault() {
            return;
        }
        let s = *SIZES
            .iter()
            .rev()
            .find(|&&s| s <= c.size_log2)
            .unwrap_or(&12);
        let offset_in_range = va & ((1u64 << c.size_log2.min(63)) - 1) & !((1u64 << s) - 1);
        let completion = AtsCompletion {
            pa_base: c.pa_base | offset_in_range,
            size_log2: s,
            ..c
        };
        let e = AtcEntry {
            pasid,
            va_base: va & !((1u64 << s) - 1),
            completion,
        };
        self.map.insert(key(pasid, s, va >> s), e);
    }

    /// An ATS Invalidate Request: `pasid` None invalidates every PASID's
    /// entries in the range (no PASID prefix).
    pub fn invalidate(&mut self, pasid: Option<u32>, range: &SRange) -> usize {
        SIZES
            .iter()
            .map(|&s| match pasid {
                Some(p) => remove_range(
                    &mut self.map,
                    range,
                    s,
                    |pn| key(p, s, pn),
                    |k| (k.tag().pasid == p && k.sub() == s).then_some(k.pn()),
                ),
                None => {
                    let (first, last) = (range.base >> s, range.last() >> s);
                    self.map
                        .retain(|k, _| !(k.sub() == s && (first..=last).contains(&k.pn())))
                }
            })
            .sum()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Entries of `pasid` overlapping `[va, va+len)`.
    pub fn entries(&self, pasid: u32, va: u64, len: u64) -> Vec<AtcEntry> {
        let last = va.saturating_add(len.max(1) - 1);
        self.map
            .iter()
            .map(|(_, e)| e)
            .filter(|e| {
                e.pasid == pasid
                    && e.va_base <= last
                    && va <= e.va_base + ((1u64 << e.completion.size_log2) - 1)
            })
            .copied()
            .collect()
    }
}

/// ATC contents and the invalidation generation.
#[derive(Debug)]
pub struct AtcState {
    pub atc: Atc,
    /// Bumped by every invalidation: a completion obtained before it is not
    /// cached or used.
    pub gen: u64,
}

/// The ATC behind a reader-writer lock whose read side is the in-flight
/// set: an access holds it while it looks the translation up and moves the
/// data, and an invalidation takes the write side, so it completes only
/// after every access that could be using a removed entry has finished.
/// Accesses hold it for one page copy at most, so the wait is bounded; new
/// accesses queue behind a waiting invalidation (the lock prefers writers).
#[derive(Debug)]
pub struct AtcGate {
    state: RwLock<AtcState>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl AtcGate {
    pub fn new(capacity: usize) -> Self {
        AtcGate {
            state: RwLock::new(AtcState {
                atc: Atc::new(capacity),
                gen: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Join the in-flight set (and read the ATC) until the guard is dropped.
    pub fn read(&self) -> RwLockReadGuard<'_, AtcState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, AtcState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Cache a completion unless an invalidation happened since `since`.
    pub fn fill(&self, since: u64, pasid: u32, va: u64, c: AtsCompletion) -> bool {
        let mut st = self.write();
        if st.gen != since {
            return false;
        }
        st.atc.insert(pasid, va, c);
        true
    }

    /// Remove matching entries once the accesses in flight have finished.
    pub fn invalidate(&self, pasid: Option<u32>, range: &SRange) -> usize {
        let mut st = self.write();
        st.gen += 1;
        st.atc.invalidate(pasid, range)
    }

    pub fn clear(&self) {
        let mut st = self.write();
        st.atc.clear();
        st.gen += 1;
    }

    pub fn len(&self) -> usize {
        self.read().atc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Count accesses that found a usable entry and those that did not.
    pub fn count(&self, hits: u32, misses: u32) {
        if hits > 0 {
            self.hits.fetch_add(u64::from(hits), Ordering::Relaxed);
        }
        if misses > 0 {
            self.misses.fetch_add(u64::from(misses), Ordering::Relaxed);
        }
    }

    pub fn hits_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// PRG response codes (§6.3).
pub const PRG_SUCCESS: u8 = 0x0;
pub const PRG_INVALID: u8 = 0x1;
pub const PRG_FAILURE: u8 = 0xf;

#[derive(Debug, Default)]
pub struct PriState {
    next_prgi: u16,
    /// Outstanding page request groups and their answer once it came.
    pub outstanding: FxHashMap<u16, Option<u8>>,
    /// Response Failure received: PRI stopped until reset.
    pub stopped: bool,
    pub unexpected: u64,
}

impl PriState {
    /// Allocate a PRG index not in use (9 bits).
    pub fn alloc(&mut self) -> Option<u16> {
        for _ in 0..512 {
            let g = self.next_prgi & 0x1ff;
            self.next_prgi = self.next_prgi.wrapping_add(1);
            if let std::collections::hash_map::Entry::Vacant(v) = self.outstanding.entry(g) {
                v.insert(None);
                return Some(g);
            }
        }
        None
    }
}

/// PRI state of an endpoint, with the condition variable accesses wait on.
#[derive(Debug, Default)]
pub struct Pri {
    pub state: Mutex<PriState>,
    pub answered: Condvar,
}

impl Pri {
    /// Deliver a PRG response. Returns false for an unexpected PRG index.
    pub fn respond(&self, prgi: u16, code: u8) -> bool {
        let mut st = self.state.lock().unwrap();
        let ok = match st.outstanding.get_mut(&(prgi & 0x1ff)) {
            Some(slot @ None) => {
                *slot = Some(code);
                true
            }
            _ => {
                st.unexpected += 1;
                false
            }
        };
        if ok && code != PRG_SUCCESS && code != PRG_INVALID {
            st.stopped = true;
        }
        drop(st);
        self.answered.notify_all();
        ok
    }

    /// Wait for the answer to `prgi`; `None` on timeout. The slot is freed.
    pub fn wait(&self, prgi: u16, timeout: std::time::Duration) -> Option<u8> {
        let st = self.state.lock().unwrap();
        let (mut st, _) = self
            .answered
            .wait_timeout_while(st, timeout, |s| {
                matches!(s.outstanding.get(&prgi), Some(None))
            })
            .unwrap();
        st.outstanding.remove(&prgi).flatten()
    }

    pub fn reset(&self) {
        let mut st = self.state.lock().unwrap();
        st.outstanding.clear();
        st.stopped = false;
        drop(st);
        self.answered.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn completion_encoding() {
        let c = AtsCompletion {
            r: true,
            w: true,
            pa_base: 0x1234_5000,
            size_log2: 12,
            ..Default::default()
        };
        assert_eq!(c.encode(), 0x1234_5003);
        assert_eq!(AtsCompletion::decode(c.encode()), c);
        // 2 MiB: S=1, bits 19:12 set, bit 20 clear (§8.2).
        let c = AtsCompletion {
            r: true,
            pa_base: 0x4020_0000,
            size_log2: 21,
            ..Default::default()
        };
        let v = c.encode();
        assert_eq!(v & 0x800, 0x800);
        assert_eq!(v & 0x1f_f000, 0xf_f000);
        assert_eq!(v & !0x1f_ffff, 0x4020_0000);
        assert_eq!(AtsCompletion::decode(v), c);
        let all = AtsCompletion {
            r: true,
            w: false,
            u: true,
            exe: true,
            privileged: true,
            global: true,
            pa_base: 0x1000,
            size_log2: 12,
        };
        assert_eq!(all.encode() & 0x3f, 0b11_1101);
        assert_eq!(AtsCompletion::fault(12).encode(), 0);
    }

    #[test]
    fn atc_lookup_and_invalidate_by_pasid_and_range() {
        let mut a = Atc::new(16);
        let c = |pa| AtsCompletion {
            r: true,
            w: true,
            pa_base: pa,
            size_log2: 12,
            ..Default::default()
        };
        a.insert(1, 0x1000, c(0xa000));
        a.insert(1, 0x2000, c(0xb000));
        a.insert(2, 0x1000, c(0xc000));
        a.insert(
            1,
            0x20_0000,
            AtsCompletion {
                size_log2: 21,
                ..c(0x40_0000)
            },
        );
        assert_eq!(a.lookup(1, 0x1fff).unwrap().pa(0x1fff), 0xafff);
        assert_eq!(a.lookup(1, 0x21_0123).unwrap().pa(0x21_0123), 0x41_0123);
        assert_eq!(a.invalidate(Some(1), &SRange::decode(0x1000, false)), 1);
        assert!(
            a.lookup(1, 0x1000).is_none()
                && a.lookup(2, 0x1000).is_some()
                && a.lookup(1, 0x2000).is_some()
        );
        assert_eq!(
            a.invalidate(None, &SRange::decode(0x0, true)),
            1,
            "all PASIDs, 8 KiB at 0"
        );
        assert!(a.lookup(2, 0x1000).is_none());
        assert_eq!(
            a.invalidate(Some(1), &SRange::decode(0x3f_f000, false)),
            1,
            "small range inside a 2 MiB entry"
        );
        assert_eq!(a.len(), 1);
        a.insert(3, 0x5000, AtsCompletion::fault(12));
        assert_eq!(a.len(), 1, "faults are not cached");
        // A 1 GiB+ completion is cached as the 1 GiB slice that contains va.
        a.insert(
            4,
            0x4000_1000,
            AtsCompletion {
                size_log2: 31,
                ..c(0x8000_0000)
            },
        );
        assert_eq!(
            a.lookup(4, 0x4000_1000).unwrap().pa(0x4000_1000),
            0xc000_1000
        );
    }

    #[test]
    fn invalidation_waits_for_inflight_access() {
        let gate = Arc::new(AtcGate::new(8));
        let c = AtsCompletion {
            r: true,
            pa_base: 0xa000,
            size_log2: 12,
            ..Default::default()
        };
        let gen = gate.read().gen;
        assert!(gate.fill(gen, 1, 0x1000, c));
        let access = gate.read();
        assert!(access.atc.lookup(1, 0x1000).is_some());
        let done = Arc::new(AtomicU64::new(0));
        let t = {
            let (gate, done) = (gate.clone(), done.clone());
            std::thread::spawn(move || {
                let r = gate.invalidate(Some(1), &SRange::EVERYTHING);
                done.store(1, Ordering::SeqCst);
                r
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            done.load(Ordering::SeqCst),
            0,
            "invalidation completed while the access was in flight"
        );
        let seen = access.gen;
        drop(access);
        assert_eq!(t.join().unwrap(), 1);
        // A completion obtained before the invalidation must not be cached.
        assert!(!gate.fill(seen, 1, 0x1000, c));
        assert!(gate.is_empty());
    }

    #[test]
    fn pri_round_trip_and_failure() {
        let pri = Arc::new(Pri::default());
        let g = pri.state.lock().unwrap().alloc().unwrap();
        let p2 = pri.clone();
        let t = std::thread::spawn(move || p2.wait(g, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(pri.respond(g, PRG_SUCCESS));
        assert_eq!(t.join().unwrap(), Some(PRG_SUCCESS));
        assert!(!pri.respond(g, PRG_SUCCESS), "unexpected PRG index");
        let g = pri.state.lock().unwrap().alloc().unwrap();
        assert_eq!(pri.wait(g, Duration::from_millis(10)), None, "timeout");
        let g = pri.state.lock().unwrap().alloc().unwrap();
        assert!(pri.respond(g, PRG_FAILURE));
        assert!(pri.state.lock().unwrap().stopped);
        pri.reset();
        assert!(!pri.state.lock().unwrap().stopped);
    }
}
