//! Register images: Extended Feature Register (§7.3), Control (§7.2) and the
//! Device Table Base register (§7.1). The guest reads the EFR image to learn
//! what is supported and hands in Control and Device Table Base values.

/// Extended Feature Register bits (§7.3).
pub mod efr {
    pub const PREF_SUP: u64 = 1 << 0;
    pub const PPR_SUP: u64 = 1 << 1;
    pub const NX_SUP: u64 = 1 << 3;
    pub const GT_SUP: u64 = 1 << 4;
    pub const IA_SUP: u64 = 1 << 6;
    pub const HATS_SHIFT: u32 = 10;
    pub const GATS_SHIFT: u32 = 12;
    pub const GLX_SUP_SHIFT: u32 = 14;
    pub const PASMAX_SHIFT: u32 = 32;
    pub const US_SUP: u64 = 1 << 37;
    pub const GIO_SUP: u64 = 1 << 48;
    pub const EPH_SUP: u64 = 1 << 50;
}

/// Control register bits (§7.2).
pub mod control {
    pub const IOMMU_EN: u64 = 1 << 0;
    pub const EVENT_LOG_EN: u64 = 1 << 2;
    pub const EVENT_INT_EN: u64 = 1 << 3;
    pub const COM_WAIT_INT_EN: u64 = 1 << 4;
    pub const INV_TIMEOUT: u64 = 0b111 << 5;
    pub const COHERENT: u64 = 1 << 10;
    pub const CMD_BUF_EN: u64 = 1 << 12;
    pub const PPR_LOG_EN: u64 = 1 << 13;
    pub const PPR_INT_EN: u64 = 1 << 14;
    pub const PPR_EN: u64 = 1 << 15;
    pub const GT_EN: u64 = 1 << 16;
    pub const EPH_EN: u64 = 1 << 45;
    /// Bits the model honours or accepts; any other bit is refused.
    pub const KNOWN: u64 = IOMMU_EN
        | EVENT_LOG_EN
        | EVENT_INT_EN
        | COM_WAIT_INT_EN
        | INV_TIMEOUT
        | COHERENT
        | CMD_BUF_EN
        | PPR_LOG_EN
        | PPR_INT_EN
        | PPR_EN
        | GT_EN
        | EPH_EN;
}

/// Width of PASIDs the model supports (EFR.PASmax + 1).
pub const PASID_BITS: u32 = 16;

/// The EFR image this model advertises: PPR, NX/US, guest translation,
/// INVALIDATE_IOMMU_ALL, 2-level GCR3, 16-bit PASIDs, GIoSup, EPHSup; GATS=1
/// when 5-level guest tables are enabled; HATS=3 (no host tables: Mode 0 only).
pub fn efr_image(five_level: bool) -> u64 {
    efr::PPR_SUP
        | efr::NX_SUP
        | efr::GT_SUP
        | efr::IA_SUP
        | (3 << efr::HATS_SHIFT)
        | (u64::from(five_level) << efr::GATS_SHIFT)
        | (1 << efr::GLX_SUP_SHIFT)
        | (u64::from(PASID_BITS - 1) << efr::PASMAX_SHIFT)
        | efr::US_SUP
        | efr::GIO_SUP
        | efr::EPH_SUP
}

/// Decoded Device Table Base register (MMIO 0x0000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevTableBase {
    pub base: u64,
    /// Number of 32-byte entries.
    pub entries: u32,
}

impl DevTableBase {
    pub fn decode(reg: u64) -> Result<Self, RegError> {
        const BASE: u64 = 0x000f_ffff_ffff_f000;
        const SIZE: u64 = 0x1ff;
        if reg & !(BASE | SIZE) != 0 {
            return Err(RegError::Reserved {
                reg,
                bits: reg & !(BASE | SIZE),
            });
        }
        Ok(Self {
            base: reg & BASE,
            entries: (((reg & SIZE) + 1) * 4096 / 32) as u32,
        })
    }

    pub fn encode(base: u64, pages: u32) -> u64 {
        (base & 0x000f_ffff_ffff_f000) | u64::from(pages.saturating_sub(1) & 0x1ff)
    }

    pub fn bytes(&self) -> u64 {
        u64::from(self.entries) * 32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegError {
    #[error("register value {reg:#x} has reserved bits {bits:#x} set")]
    Reserved { reg: u64, bits: u64 },
    #[error("device table at {base:#x} ({bytes} bytes) is outside guest RAM")]
    TableOutsideRam { base: u64, bytes: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efr_fields() {
        let e = efr_image(false);
        assert_eq!((e >> 32) & 0x1f, 15, "PASmax");
        assert_eq!((e >> 12) & 3, 0, "GATS 4-level");
        assert_eq!((e >> 14) & 3, 1, "GLXSup 2 levels");
        assert_eq!((e >> 10) & 3, 3, "HATS: no host tables");
        for bit in [1, 3, 4, 6, 37, 48, 50] {
            assert_ne!(e & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!(e & 1, 0, "no PREFETCH");
        assert_eq!((efr_image(true) >> 12) & 3, 1, "GATS 5-level");
    }

    #[test]
    fn devtab_base() {
        let d = DevTableBase::decode(0x12_3000 | 0x1ff).unwrap();
        assert_eq!(d.base, 0x12_3000);
        assert_eq!(d.entries, 65536);
        assert_eq!(DevTableBase::decode(0x5000).unwrap().entries, 128);
        assert!(DevTableBase::decode(0x5000 | 1 << 9).is_err());
        assert!(DevTableBase::decode(1 << 60).is_err());
        assert_eq!(DevTableBase::encode(0x5000, 2), 0x5001);
    }
}
