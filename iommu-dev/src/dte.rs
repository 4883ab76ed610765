//! Device Table Entry, 256 bits (§1), and the GCR3 table lookup (§2).

use crate::mem::{self, Mem, MemError};

/// A raw 256-bit DTE as four little-endian quadwords.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dte(pub [u64; 4]);

/// The DTE fields a guest-translation (v2) model uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DteInfo {
    pub v: bool,
    pub tv: bool,
    pub mode: u8,
    pub ppr: bool,
    pub giov: bool,
    pub gv: bool,
    /// GCR3 table levels - 1.
    pub glx: u8,
    pub gcr3_root: u64,
    pub ir: bool,
    pub iw: bool,
    pub domain_id: u16,
    /// ATS allowed (DTE.I).
    pub iotlb: bool,
    pub se: bool,
    pub sa: bool,
    /// GPM = 01: 5-level guest tables.
    pub five_level: bool,
}

/// Why a DTE is illegal: it becomes ILLEGAL_DEV_TABLE_ENTRY with RZ=1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DteError {
    #[error("reserved bits {bits:#x} set in DTE quadword {q}")]
    Reserved { q: usize, bits: u64 },
    #[error("Mode {0} (host translation) is not supported: EFR.HATS=3")]
    HostMode(u8),
    #[error("GLX {0} exceeds EFR.GLXSup")]
    Glx(u8),
    #[error("GPM {0:#b} is reserved or needs EFR.GATS=1")]
    Gpm(u8),
    #[error("DTE.PPR set while Control.EPHEn is clear")]
    PprWithoutEph,
}

const fn bit(q: u64, b: u32) -> bool {
    (q >> b) & 1 == 1
}

impl Dte {
    pub const SIZE: u64 = 32;

    pub fn read(mem: &Mem, table_base: u64, devid: u16) -> Result<Self, MemError> {
        let at = table_base + u64::from(devid) * Self::SIZE;
        let mut q = [0u64; 4];
        for (i, v) in q.iter_mut().enumerate() {
            *v = mem::load_u64(mem, at + 8 * i as u64)?;
        }
        Ok(Dte(q))
    }

    /// Decode and check against what the model supports (`gats5`: EFR.GATS=1,
    /// `eph_en`: Control.EPHEn).
    pub fn decode(&self, gats5: bool, eph_en: bool) -> Result<DteInfo, DteError> {
        let [q0, q1, q2, q3] = self.0;
        // §1.1-1.4: reserved bits, plus fields that need features we do not
        // advertise (HAD needs HASup; Q3 vIOMMU fields).
        let reserved = [
            (0, q0 & (0x7c | 0x180 | 1 << 63)),
            (1, q1 & (1 << 42)),
            (2, q2 & (0b11 << 52 | 1 << 59)),
            (3, q3 & ((1 << 54) - 1)),
        ];
        if let Some(&(q, bits)) = reserved.iter().find(|(_, b)| *b != 0) {
            return Err(DteError::Reserved { q, bits });
        }
        let info = DteInfo {
            v: bit(q0, 0),
            tv: bit(q0, 1),
            mode: ((q0 >> 9) & 7) as u8,
            ppr: bit(q0, 52),
            giov: bit(q0, 54),
            gv: bit(q0, 55),
            glx: ((q0 >> 56) & 3) as u8,
            gcr3_root: ((q0 >> 58) & 7) << 12 | ((q1 >> 16) & 0xffff) << 15 | (q1 >> 43) << 31,
            ir: bit(q0, 61),
            iw: bit(q0, 62),
            domain_id: q1 as u16,
            iotlb: bit(q1, 32),
            se: bit(q1, 33),
            sa: bit(q1, 34),
            five_level: (q2 >> 54) & 3 == 1,
        };
        if !info.v || !info.tv {
            return Ok(info);
        }
        if info.mode != 0 {
            return Err(DteError::HostMode(info.mode));
        }
        if info.glx > 1 {
            return Err(DteError::Glx(info.glx));
        }
        let gpm = ((q2 >> 54) & 3) as u8;
        if gpm > 1 || (gpm == 1 && !gats5) {
            return Err(DteError::Gpm(gpm));
        }
        if info.ppr && !eph_en {
            return Err(DteError::PprWithoutEph);
        }
        Ok(info)
    }

    /// Build a v2 DTE as Linux writes it for an SVA-capable device.
    pub fn encode_v2(
        domain_id: u16,
        gcr3_root: u64,
        glx: u8,
        iotlb: bool,
        five_level: bool,
    ) -> Self {
        let mut q0 = 1 | 1 << 1 | 1 << 55 | 1 << 61 | 1 << 62;
        q0 |= u64::from(glx & 3) << 56;
        q0 |= ((gcr3_root >> 12) & 7) << 58;
        let mut q1 = u64::from(domain_id);
        q1 |= ((gcr3_root >> 15) & 0xffff) << 16;
        q1 |= ((gcr3_root >> 31) & 0x1f_ffff) << 43;
        q1 |= u64::from(iotlb) << 32;
        let q2 = u64::from(five_level) << 54;
        Dte([q0, q1, q2, 0])
    }
}

/// GCR3 table entry: bit 0 valid, 51:12 address (§2).
pub const GCR3_VALID: u64 = 1;
const GCR3_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Outcome of a GCR3 lookup that did not yield a guest CR3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gcr3Fault {
    /// An entry on the way had V=0: an ordinary translation fault.
    NotValid,
    /// Reserved bits (11:1, 63:52) set: a translation fault with RZ=1.
    Reserved { entry: u64 },
    /// The table read failed (PAGE_TAB_HARDWARE_ERROR at this GPA).
    Memory(u64),
}

/// Look up the guest CR3 of `pasid` in a 1- or 2-level GCR3 table.
pub fn gcr3_lookup(mem: &Mem, root: u64, glx: u8, pasid: u32) -> Result<u64, Gcr3Fault> {
    let mut table = root;
    for level in (0..=u32::from(glx)).rev() {
        let at = table + 8 * u64::from((pasid >> (9 * level)) & 0x1ff);
        let e = mem::load_u64(mem, at).map_err(|_| Gcr3Fault::Memory(at))?;
        if e & GCR3_VALID == 0 {
            return Err(Gcr3Fault::NotValid);
        }
        if e & !(GCR3_ADDR | GCR3_VALID) != 0 {
            return Err(Gcr3Fault::Reserved { entry: e });
        }
        table = e & GCR3_ADDR;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_worked_example() {
        // §1.6: a DTE dump from a Linux identity domain with PASID/PRI.
        let d = Dte([
            0x7d90000000000003,
            0x0000100103fc0009,
            0x2000000117840013,
            0,
        ]);
        let i = d.decode(false, true).unwrap();
        assert!(i.v && i.tv && i.gv && i.ppr && i.ir && i.iw && i.iotlb);
        assert!(!i.giov);
        assert_eq!(i.mode, 0);
        assert_eq!(i.glx, 1);
        assert_eq!(i.domain_id, 9);
        assert_eq!(i.gcr3_root, 0x1_01FE_7000);
        assert_eq!(d.decode(false, false), Err(DteError::PprWithoutEph));
    }

    #[test]
    fn encode_roundtrip_and_split_root() {
        for root in [
            0x1000u64,
            0x7000,
            0x8000,
            0x7fff_f000,
            0x8000_0000,
            0xf_ffff_ffff_f000,
        ] {
            let d = Dte::encode_v2(0xbeef, root, 1, true, true);
            let i = d.decode(true, false).unwrap();
            assert_eq!(i.gcr3_root, root);
            assert_eq!(i.domain_id, 0xbeef);
            assert!(i.five_level && i.iotlb && i.gv);
        }
    }

    #[test]
    fn illegal_combinations() {
        let good = Dte::encode_v2(1, 0x1000, 1, true, false);
        // (quadword, bits ORed in, the error's kind)
        type Is = fn(&DteError) -> bool;
        let cases: [(usize, u64, Is); 6] = [
            (0, 1 << 3, |e| matches!(e, DteError::Reserved { q: 0, .. })),
            (0, 3 << 9, |e| *e == DteError::HostMode(3)),
            (0, 3 << 56, |e| *e == DteError::Glx(3)),
            (2, 2 << 54, |e| *e == DteError::Gpm(2)),
            (1, 1 << 42, |e| matches!(e, DteError::Reserved { q: 1, .. })),
            (3, 1, |e| matches!(e, DteError::Reserved { q: 3, .. })),
        ];
        for (q, bits, is) in cases {
            let mut d = good;
            d.0[q] |= bits;
            let r = d.decode(true, true);
            assert!(r.as_ref().is_err_and(is), "q{q} |= {bits:#x}: {r:?}");
        }
        let five = Dte::encode_v2(1, 0x1000, 0, true, true);
        assert_eq!(five.decode(false, true), Err(DteError::Gpm(1)));
        // V=0 or TV=0: fields are not checked beyond reserved bits.
        let mut d = good;
        d.0[0] &= !2;
        d.0[0] |= 3 << 9;
        assert!(!d.decode(true, true).unwrap().tv);
    }

    #[test]
    fn gcr3_one_and_two_levels() {
        let mem = mem::anon(0x10_0000);
        // 1 level: root 0x1000, PASID 5 -> CR3 0x5000.
        mem::store_u64(&mem, 0x1000 + 5 * 8, 0x5000 | GCR3_VALID).unwrap();
        assert_eq!(gcr3_lookup(&mem, 0x1000, 0, 5), Ok(0x5000));
        assert_eq!(gcr3_lookup(&mem, 0x1000, 0, 6), Err(Gcr3Fault::NotValid));
        // 2 levels: PASID 0x2_03 -> top index 1, leaf index 3.
        mem::store_u64(&mem, 0x2000 + 8, 0x3000 | GCR3_VALID).unwrap();
        mem::store_u64(&mem, 0x3000 + 3 * 8, 0x9000 | GCR3_VALID).unwrap();
        assert_eq!(gcr3_lookup(&mem, 0x2000, 1, 0x203), Ok(0x9000));
        assert_eq!(
            gcr3_lookup(&mem, 0x2000, 1, 0x003),
            Err(Gcr3Fault::NotValid)
        );
        mem::store_u64(&mem, 0x3000 + 4 * 8, 0x9000 | GCR3_VALID | 0x10).unwrap();
        assert!(matches!(
            gcr3_lookup(&mem, 0x2000, 1, 0x204),
            Err(Gcr3Fault::Reserved { .. })
        ));
        mem::store_u64(&mem, 0x2000 + 16, 0x7ff_f000 | GCR3_VALID).unwrap();
        assert_eq!(
            gcr3_lookup(&mem, 0x2000, 1, 0x400),
            Err(Gcr3Fault::Memory(0x7ff_f000))
        );
    }
}
