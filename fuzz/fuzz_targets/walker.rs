//! The page-table walker over arbitrary tables, against an independent
//! reference walk written here from the x86-64 rules (read-only walks: no
//! A/D updates); then, with the A/D mode the input picks, the walker (fast
//! path first) against its general walk alone: the same result and the
//! same A/D updates. Input: 8 bytes of CR3, 8 of VA, one byte of request
//! flags, depth and A/D mode, then guest memory.
#![no_main]

use iommu_dev::mem::Words;
use iommu_dev::walker::{
    walk, walk_words, walk_words_general, AdUpdate, Dirty, Perms, Request, Start, WalkFault,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

#[path = "common.rs"]
mod common;

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
/// Address bits 51:12 of an entry.
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Physical-address bits above 48 (reserved on this model).
const HIGH_PA: u64 = 0x000f_0000_0000_0000;

#[derive(Debug, PartialEq)]
enum Outcome {
    /// (physical address, writable, user, nx)
    Ok(u64, bool, bool, bool),
    NotPresent(u8),
    Reserved(u8),
    Permission,
    NonCanonical,
    Memory,
}

fn reference(mem: &[u8], cr3: u64, levels: u8, va: u64, req: Request) -> Outcome {
    let width = 12 + 9 * u32::from(levels);
    let sign = (va as i64) >> (width - 1);
    if sign != 0 && sign != -1 {
        return Outcome::NonCanonical;
    }
    let (mut table, mut w, mut u, mut nx) = (cr3 & ADDR, true, true, false);
    for level in (1..=levels).rev() {
        let index = (va >> (12 + 9 * u32::from(level - 1))) & 0x1ff;
        let at = table + 8 * index;
        if at.checked_add(8).is_none_or(|end| end > mem.len() as u64) {
            return Outcome::Memory;
        }
        let e = u64::from_le_bytes(mem[at as usize..at as usize + 8].try_into().unwrap());
        if e & P == 0 {
            return Outcome::NotPresent(level);
        }
        let big = e & PS != 0;
        let low_reserved = match (big, level) {
            (true, 2) => e & 0x001f_e000,
            (true, 3) => e & 0x3fff_e000,
            (true, _) if level >= 4 => PS,
            _ => 0,
        };
        if e & HIGH_PA != 0 || low_reserved != 0 {
            return Outcome::Reserved(level);
        }
        w &= e & RW != 0;
        u &= e & US != 0;
        nx |= e & NX != 0;
        if level == 1 || big {
            if !((req.privileged || u) && (!req.write || w) && !(req.exec && nx)) {
                return Outcome::Permission;
            }
            let size = 1u64 << (12 + 9 * u32::from(level - 1));
            let pa = (e & ADDR & !(size - 1)) | (va & (size - 1));
            return Outcome::Ok(pa, w, u, nx);
        }
        table = e & ADDR;
    }
    unreachable!("the loop returns at level 1")
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let cr3 = common::u64_at(data, 0) % common::RAM as u64;
    let va = common::u64_at(data, 8);
    let f = data[16];
    let levels = if f & 8 != 0 { 5 } else { 4 };
    let req = Request {
        write: f & 1 != 0,
        exec: f & 2 != 0,
        privileged: f & 4 != 0,
    };
    let image = &data[17..];
    let mem = common::guest_memory(image);
    let mut ram = vec![0u8; common::RAM];
    let n = image.len().min(common::RAM);
    ram[..n].copy_from_slice(&image[..n]);
    let got = match walk(&mem, cr3, levels, va, req, AdUpdate::ReadOnly) {
        Ok(t) => Outcome::Ok(t.pa(va), t.perms.write, t.perms.user, t.perms.nx),
        Err(WalkFault::NotPresent { level }) => Outcome::NotPresent(level),
        Err(WalkFault::Reserved { level, .. }) => Outcome::Reserved(level),
        Err(WalkFault::Permission { .. }) => Outcome::Permission,
        Err(WalkFault::NonCanonical) => Outcome::NonCanonical,
        Err(WalkFault::Memory { .. }) => Outcome::Memory,
    };
    let want = reference(&ram, cr3, levels, va, req);
    assert_eq!(got, want, "cr3 {cr3:#x} va {va:#x} levels {levels} {req:?}");

    let ad = match (f >> 4) & 3 {
        0 => AdUpdate::ReadOnly,
        1 => AdUpdate::Update(Dirty::Never),
        2 => AdUpdate::Update(Dirty::OnWrite),
        _ => AdUpdate::Update(Dirty::IfWritable),
    };
    let start = Start {
        level: levels,
        table: cr3 & ADDR,
        perms: Perms::ALL,
    };
    let general_mem = common::guest_memory(image);
    let fast = walk_words(&mut Words::new(&mem), start, levels, va, req, ad);
    let general = walk_words_general(&mut Words::new(&general_mem), start, levels, va, req, ad);
    assert_eq!(
        fast, general,
        "cr3 {cr3:#x} va {va:#x} levels {levels} {req:?} {ad:?}"
    );
    let (mut a, mut b) = (vec![0u8; common::RAM], vec![0u8; common::RAM]);
    mem.read_slice(&mut a, GuestAddress(0)).unwrap();
    general_mem.read_slice(&mut b, GuestAddress(0)).unwrap();
    assert!(a == b, "A/D updates differ: cr3 {cr3:#x} va {va:#x} {ad:?}");
});
