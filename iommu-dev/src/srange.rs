//! The "S" address-range encoding shared by invalidation commands and ATS (§4.2).

/// The address Linux uses with S=1 for "everything".
pub const ALL_PAGES: u64 = 0x7fff_ffff_ffff_f000;

/// A naturally aligned range `[base, base + size)`; `size` is a power of two
/// of at least 4 KiB, or 2^64 for "everything" (stored as `size == 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SRange {
    pub base: u64,
    size_log2: u8,
}

impl SRange {
    pub const EVERYTHING: SRange = SRange {
        base: 0,
        size_log2: 64,
    };

    /// Decode a page address (bits 63:12 meaningful) with its S bit.
    pub fn decode(addr: u64, s: bool) -> Self {
        let addr = addr & !0xfff;
        if !s {
            return SRange {
                base: addr,
                size_log2: 12,
            };
        }
        // Lowest zero bit k >= 12: the range is 2^(k+1) bytes.
        let k = (addr | 0xfff).trailing_ones();
        if k >= 63 {
            return Self::EVERYTHING;
        }
        let size_log2 = k as u8 + 1;
        SRange {
            base: addr & !((1u64 << size_log2) - 1),
            size_log2,
        }
    }

    /// A page-aligned naturally aligned range of 2^`size_log2` bytes containing `addr`.
    pub fn aligned(addr: u64, size_log2: u8) -> Self {
        if size_log2 >= 64 {
            return Self::EVERYTHING;
        }
        let size_log2 = size_log2.max(12);
        SRange {
            base: addr & !((1u64 << size_log2) - 1),
            size_log2,
        }
    }

    /// Encode as (address, S) the way hardware expects it.
    pub fn encode(&self) -> (u64, bool) {
        match self.size_log2 {
            12 => (self.base, false),
            64 => (ALL_PAGES, true),
            n => (self.base | ((1u64 << (n - 1)) - 1) & !0xfff, true),
        }
    }

    /// The smallest S range covering `[start, end]` (inclusive), computed as
    /// Linux does (`msb = fls64(start ^ end) - 1`; everything when msb >= 51).
    pub fn covering(start: u64, end: u64) -> Self {
        let start = start & !0xfff;
        let end = end & !0xfff;
        if start == end {
            return SRange {
                base: start,
                size_log2: 12,
            };
        }
        let msb = 63 - (start ^ end).leading_zeros();
        if msb >= 51 {
            return Self::EVERYTHING;
        }
        Self::aligned(start, msb as u8 + 1)
    }

    pub fn size_log2(&self) -> u8 {
        self.size_log2
    }

    /// The range one S-encoded size smaller (its lower half), as a decoder
    /// that counts the lowest clear bit one too low would produce; a single
    /// page stays as it is. Only for the `narrow` fault action.
    pub fn narrowed(&self) -> Self {
        match self.size_log2 {
            12 => *self,
            n => SRange {
                base: self.base,
                size_log2: n - 1,
            },
        }
    }

    pub fn is_everything(&self) -> bool {
        self.size_log2 >= 64
    }

    /// Last byte of the range (inclusive).
    pub fn last(&self) -> u64 {
        if self.is_everything() {
            u64::MAX
        } else {
            self.base + ((1u64 << self.size_log2) - 1)
        }
    }

    /// Whether `[base, base + 2^size_log2)` overlaps this range.
    pub fn overlaps(&self, base: u64, size_log2: u8) -> bool {
        let other_last = base.saturating_add((1u64 << size_log2.min(63)) - 1);
        base <= self.last() && self.base <= other_last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_examples() {
        // §4.2: bit12=0 -> 8 KiB; bits 12..19 set, bit 20 clear -> 2 MiB;
        // bits 12..28 set, bit 29 clear -> 1 GiB; ALL_PAGES -> everything.
        let r = SRange::decode(0x4000_0000, true);
        assert_eq!((r.base, r.size_log2()), (0x4000_0000, 13));
        let r = SRange::decode(0x4000_0000 | 0xf_f000, true);
        assert_eq!((r.base, r.size_log2()), (0x4000_0000, 21));
        let r = SRange::decode(0x4000_0000 | 0x1fff_f000, true);
        assert_eq!((r.base, r.size_log2()), (0x4000_0000, 30));
        assert!(SRange::decode(ALL_PAGES, true).is_everything());
        assert_eq!(
            SRange::decode(0x1234_5fff, false),
            SRange::aligned(0x1234_5000, 12)
        );
    }

    #[test]
    fn encode_decode_roundtrip() {
        for log in 12..=63u8 {
            let r = SRange::aligned(0x1234_5678_9abc_d000 & ((1u64 << 62) - 1), log);
            let (a, s) = r.encode();
            assert_eq!(SRange::decode(a, s), r, "size 2^{log}");
        }
        assert_eq!(SRange::EVERYTHING.encode(), (ALL_PAGES, true));
    }

    #[test]
    fn covering_like_linux() {
        let r = SRange::covering(0x7f00_0000_1000, 0x7f00_0000_1fff);
        assert_eq!(r, SRange::aligned(0x7f00_0000_1000, 12));
        let r = SRange::covering(0x7f00_0000_1000, 0x7f00_0000_2fff);
        assert_eq!(r, SRange::aligned(0x7f00_0000_0000, 14));
        assert!(r.overlaps(0x7f00_0000_3000, 12) && !r.overlaps(0x7f00_0000_4000, 12));
        assert!(SRange::covering(0, u64::MAX).is_everything());
        assert!(SRange::covering(0, 1 << 52).is_everything());
    }

    #[test]
    fn narrowed_is_the_lower_half() {
        let r = SRange::aligned(0x20_0000, 21).narrowed();
        assert_eq!((r.base, r.size_log2()), (0x20_0000, 20));
        assert!(!r.overlaps(0x30_0000, 12));
        let p = SRange::aligned(0x5000, 12);
        assert_eq!(p.narrowed(), p);
        let e = SRange::EVERYTHING.narrowed();
        assert!(!e.is_everything() && e.overlaps(0, 12) && !e.overlaps(1 << 63, 12));
    }

    #[test]
    fn overlap() {
        let r = SRange::aligned(0x20_0000, 21);
        assert!(r.overlaps(0, 30));
        assert!(r.overlaps(0x3f_f000, 12));
        assert!(!r.overlaps(0x40_0000, 12));
        assert!(!r.overlaps(0x1f_f000, 12));
        assert!(SRange::EVERYTHING.overlaps(!0xfff, 12));
    }
}
