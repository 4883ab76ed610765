//! 128-bit AMD IOMMU commands (§4.3): decode with reserved-bit checks, encode
//! for drivers, tests and the simulator.

use crate::srange::SRange;

/// A decoded command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    CompletionWait {
        store: bool,
        interrupt: bool,
        flush: bool,
        addr: u64,
        data: u64,
    },
    InvalidateDevtabEntry {
        devid: u16,
    },
    InvalidateIommuPages {
        domain_id: u16,
        pasid: u32,
        gn: bool,
        pde: bool,
        range: SRange,
    },
    InvalidateIotlbPages {
        devid: u16,
        pasid: u32,
        gn: bool,
        maxpend: u8,
        queue_id: u16,
        range: SRange,
    },
    InvalidateInterruptTable {
        devid: u16,
    },
    CompletePprRequest {
        devid: u16,
        pasid: u32,
        gn: bool,
        tag: u16,
        code: u8,
    },
    InvalidateIommuAll,
}

pub mod opcode {
    pub const COMPLETION_WAIT: u8 = 0x1;
    pub const INVALIDATE_DEVTAB_ENTRY: u8 = 0x2;
    pub const INVALIDATE_IOMMU_PAGES: u8 = 0x3;
    pub const INVALIDATE_IOTLB_PAGES: u8 = 0x4;
    pub const INVALIDATE_INTERRUPT_TABLE: u8 = 0x5;
    pub const PREFETCH_IOMMU_PAGES: u8 = 0x6;
    pub const COMPLETE_PPR_REQUEST: u8 = 0x7;
    pub const INVALIDATE_IOMMU_ALL: u8 = 0x8;
}

/// Why a command is illegal (ILLEGAL_COMMAND_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("opcode {0:#x} is not a supported command")]
    Opcode(u8),
    #[error("reserved bits set: low {lo:#018x} high {hi:#018x}")]
    Reserved { lo: u64, hi: u64 },
    /// COMPLETION_WAIT with S=1 whose store address is not guest RAM; the
    /// IOMMU logs COMMAND_HARDWARE_ERROR (docs/amd-iommu.md, §4.4).
    #[error("COMPLETION_WAIT store address {addr:#x} is outside guest RAM")]
    StoreOutsideRam { addr: u64 },
    /// A `command: fail` fault rule refused this command.
    #[error("injected failure of the command with opcode {opcode:#x} (fault rule)")]
    Injected { opcode: u8 },
}

const OPCODE_SHIFT: u32 = 60;
const ADDR_HI_MASK: u64 = !0xfff;

impl Command {
    /// Decode 16 bytes as the IOMMU reads them from the command buffer.
    pub fn decode(raw: &[u8; 16]) -> Result<Command, CommandError> {
        let lo = u64::from_le_bytes(raw[..8].try_into().unwrap());
        let hi = u64::from_le_bytes(raw[8..].try_into().unwrap());
        let op = (lo >> OPCODE_SHIFT) as u8;
        let check = |rlo: u64, rhi: u64| {
            if lo & rlo != 0 || hi & rhi != 0 {
                Err(CommandError::Reserved {
                    lo: lo & rlo,
                    hi: hi & rhi,
                })
            } else {
                Ok(())
            }
        };
        let s = hi & 1 != 0;
        let gn = hi & 4 != 0;
        let addr = hi & ADDR_HI_MASK;
        match op {
            opcode::COMPLETION_WAIT => {
                check(0xff << 52, 0)?;
                Ok(Command::CompletionWait {
                    store: lo & 1 != 0,
                    interrupt: lo & 2 != 0,
                    flush: lo & 4 != 0,
                    addr: lo & 0x000f_ffff_ffff_fff8,
                    data: hi,
                })
            }
            opcode::INVALIDATE_DEVTAB_ENTRY | opcode::INVALIDATE_INTERRUPT_TABLE => {
                check(0x0fff_ffff_ffff_0000, u64::MAX)?;
                let devid = lo as u16;
                Ok(if op == opcode::INVALIDATE_DEVTAB_ENTRY {
                    Command::InvalidateDevtabEntry { devid }
                } else {
                    Command::InvalidateInterruptTable { devid }
                })
            }
            opcode::INVALIDATE_IOMMU_PAGES => {
                check(0xfff << 20 | 0xfff << 48, 0x1ff << 3)?;
                Ok(Command::InvalidateIommuPages {
                    pasid: (lo & 0xf_ffff) as u32,
                    domain_id: (lo >> 32) as u16,
                    gn,
                    pde: hi & 2 != 0,
                    range: SRange::decode(addr, s),
                })
            }
            opcode::INVALIDATE_IOTLB_PAGES => {
                check(0, 0x2 | 0x1ff << 3)?;
                let pasid =
                    ((lo >> 16) & 0xff) << 8 | ((lo >> 48) & 0xff) | ((lo >> 56) & 0xf) << 16;
                Ok(Command::InvalidateIotlbPages {
                    devid: lo as u16,
                    pasid: pasid as u32,
                    gn,
                    maxpend: (lo >> 24) as u8,
                    queue_id: (lo >> 32) as u16,
                    range: SRange::decode(addr, s),
                })
            }
            opcode::COMPLETE_PPR_REQUEST => {
                check(
                    0xffff << 16 | 0xff << 52,
                    (0xffff_ffff & !4) | 0x7 << 41 | 0xffff << 48,
                )?;
                Ok(Command::CompletePprRequest {
                    devid: lo as u16,
                    pasid: ((lo >> 32) & 0xf_ffff) as u32,
                    gn,
                    tag: ((hi >> 32) & 0x1ff) as u16,
                    code: ((hi >> 44) & 0xf) as u8,
                })
            }
            opcode::INVALIDATE_IOMMU_ALL => {
                check(0x0fff_ffff_ffff_ffff, u64::MAX)?;
                Ok(Command::InvalidateIommuAll)
            }
            other => Err(CommandError::Opcode(other)),
        }
    }

    /// Encode as a driver writes it.
    pub fn encode(&self) -> [u8; 16] {
        let op = |o: u8| u64::from(o) << OPCODE_SHIFT;
        let range_hi = |r: &SRange| {
            let (a, s) = r.encode();
            (a & ADDR_HI_MASK) | u64::from(s)
        };
        let (lo, hi) = match *self {
            Command::CompletionWait {
                store,
                interrupt,
                flush,
                addr,
                data,
            } => (
                op(opcode::COMPLETION_WAIT)
                    | (addr & 0x000f_ffff_ffff_fff8)
                    | u64::from(store)
                    | u64::from(interrupt) << 1
                    | u64::from(flush) << 2,
                data,
            ),
            Command::InvalidateDevtabEntry { devid } => {
                (op(opcode::INVALIDATE_DEVTAB_ENTRY) | u64::from(devid), 0)
            }
            Command::InvalidateInterruptTable { devid } => {
                (op(opcode::INVALIDATE_INTERRUPT_TABLE) | u64::from(devid), 0)
            }
            Command::InvalidateIommuPages {
                domain_id,
                pasid,
                gn,
                pde,
                range,
            } => (
                op(opcode::INVALIDATE_IOMMU_PAGES)
                    | u64::from(pasid & 0xf_ffff)
                    | u64::from(domain_id) << 32,
                range_hi(&range) | u64::from(pde) << 1 | u64::from(gn) << 2,
            ),
            Command::InvalidateIotlbPages {
                devid,
                pasid,
                gn,
                maxpend,
                queue_id,
                range,
            } => {
                let p = u64::from(pasid);
                (
                    op(opcode::INVALIDATE_IOTLB_PAGES)
                        | u64::from(devid)
                        | ((p >> 8) & 0xff) << 16
                        | u64::from(maxpend) << 24
                        | u64::from(queue_id) << 32
                        | (p & 0xff) << 48
                        | ((p >> 16) & 0xf) << 56,
                    range_hi(&range) | u64::from(gn) << 2,
                )
            }
            Command::CompletePprRequest {
                devid,
                pasid,
                gn,
                tag,
                code,
            } => (
                op(opcode::COMPLETE_PPR_REQUEST)
                    | u64::from(devid)
                    | u64::from(pasid & 0xf_ffff) << 32,
                u64::from(gn) << 2 | u64::from(tag & 0x1ff) << 32 | u64::from(code & 0xf) << 44,
            ),
            Command::InvalidateIommuAll => (op(opcode::INVALIDATE_IOMMU_ALL), 0),
        };
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&lo.to_le_bytes());
        out[8..].copy_from_slice(&hi.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srange::ALL_PAGES;

    fn raw(lo: u64, hi: u64) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&lo.to_le_bytes());
        r[8..].copy_from_slice(&hi.to_le_bytes());
        r
    }

    #[test]
    fn completion_wait_fields() {
        // As Linux builds it: store address | S, opcode in DW1, data in DW2/DW3.
        let c =
            Command::decode(&raw(0x1000_0000_0012_3458 | 1 | 2, 0xdead_beef_0000_0001)).unwrap();
        assert_eq!(
            c,
            Command::CompletionWait {
                store: true,
                interrupt: true,
                flush: false,
                addr: 0x12_3458,
                data: 0xdead_beef_0000_0001
            }
        );
        assert!(
            Command::decode(&raw(0x1010_0000_0000_0000, 0)).is_err(),
            "bit 52 reserved"
        );
        assert_eq!(Command::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn invalidate_iommu_pages_fields() {
        // Linux: data[0]=pasid, data[1]=domid | opcode, data[2]=addr lo | S | PDE | GN.
        let lo = 0x3000_0000_0000_0000 | 0x0042u64 << 32 | 0x1234;
        let hi = ALL_PAGES | 1 | 2 | 4;
        let c = Command::decode(&raw(lo, hi)).unwrap();
        assert_eq!(
            c,
            Command::InvalidateIommuPages {
                domain_id: 0x42,
                pasid: 0x1234,
                gn: true,
                pde: true,
                range: SRange::EVERYTHING
            }
        );
        let c2 = Command::decode(&raw(lo, 0x7f00_0000_1000)).unwrap();
        assert!(
            matches!(c2, Command::InvalidateIommuPages { gn: false, pde: false, range, .. } if range == SRange::aligned(0x7f00_0000_1000, 12))
        );
        assert!(Command::decode(&raw(lo | 1 << 20, hi)).is_err());
        assert!(Command::decode(&raw(lo | 1 << 48, hi)).is_err());
        assert!(Command::decode(&raw(lo, hi | 1 << 3)).is_err());
        assert_eq!(Command::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn invalidate_iotlb_pages_pasid_split() {
        // PASID 0xabcd: [15:8]=0xab at bits 23:16, [7:0]=0xcd at bits 55:48.
        let lo = 0x4000_0000_0000_0000
            | 0xcdu64 << 48
            | 0x0010u64 << 32
            | 0x20 << 24
            | 0xab << 16
            | 0x0010;
        let c = Command::decode(&raw(lo, 0x7f00_0000_3000 | 1 | 4)).unwrap();
        assert_eq!(
            c,
            Command::InvalidateIotlbPages {
                devid: 0x10,
                pasid: 0xabcd,
                gn: true,
                maxpend: 0x20,
                queue_id: 0x10,
                range: SRange::aligned(0x7f00_0000_0000, 15)
            }
        );
        assert_eq!(Command::decode(&c.encode()), Ok(c));
        assert!(Command::decode(&raw(lo, 2)).is_err(), "bit 65 reserved");
        assert!(
            Command::decode(&raw(lo, 1 << 4)).is_err(),
            "Type field unsupported"
        );
        let wide = Command::InvalidateIotlbPages {
            devid: 1,
            pasid: 0xf_1234,
            gn: true,
            maxpend: 0,
            queue_id: 1,
            range: SRange::EVERYTHING,
        };
        assert_eq!(Command::decode(&wide.encode()), Ok(wide));
    }

    #[test]
    fn complete_ppr_and_others() {
        let c = Command::CompletePprRequest {
            devid: 0x10,
            pasid: 7,
            gn: true,
            tag: 0x1ff,
            code: 0xf,
        };
        let r = c.encode();
        let hi = u64::from_le_bytes(r[8..].try_into().unwrap());
        assert_eq!((hi >> 32) & 0x1ff, 0x1ff);
        assert_eq!((hi >> 44) & 0xf, 0xf);
        assert_eq!(Command::decode(&r), Ok(c));
        let lo = u64::from_le_bytes(r[..8].try_into().unwrap());
        assert!(Command::decode(&raw(lo, hi | 1 << 41)).is_err());
        assert!(Command::decode(&raw(lo, hi | 1)).is_err());
        assert_eq!(
            Command::decode(&raw(0x2000_0000_0000_0011, 0)),
            Ok(Command::InvalidateDevtabEntry { devid: 0x11 })
        );
        assert!(Command::decode(&raw(0x2000_0000_0001_0011, 0)).is_err());
        assert!(Command::decode(&raw(0x2000_0000_0000_0011, 1)).is_err());
        assert_eq!(
            Command::decode(&raw(0x8000_0000_0000_0000, 0)),
            Ok(Command::InvalidateIommuAll)
        );
        assert!(Command::decode(&raw(0x8000_0000_0000_0001, 0)).is_err());
        assert_eq!(
            Command::decode(&raw(0x5000_0000_0000_0003, 0)),
            Ok(Command::InvalidateInterruptTable { devid: 3 })
        );
        for op in [0u64, 6, 9, 0xa, 0xf] {
            assert_eq!(
                Command::decode(&raw(op << 60, 0)),
                Err(CommandError::Opcode(op as u8))
            );
        }
    }
}
