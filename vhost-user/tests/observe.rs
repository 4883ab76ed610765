//! What the daemon lets a guest observe: ORACLE_READ, ORACLE_AUDIT and
//! ORACLE_EPOCH, and the STATS counters.

mod common;

use common::*;
use vhost_device_amdvi::virtio_amdvi::{self as w, req, Status};
use vm_memory::{ByteValued, Bytes, GuestAddress};

#[test]
fn oracle_read_audit_epoch() {
    let (_d, mut g) = ready(CFG);
    let va = 0x4000_0000u64;
    let pas = g.map_range(va, 1);
    let epoch = STORE_AREA + 0x100;
    g.mem.write_obj(42u64, GuestAddress(epoch)).unwrap();
    ok(&g.request(req::ORACLE_EPOCH, &epoch.to_le_bytes(), 0));
    assert_eq!(
        g.request(req::ORACLE_EPOCH, &(epoch + 4).to_le_bytes(), 0)
            .status,
        Some(Status::BadRequest)
    );
    assert_eq!(
        g.request(req::ORACLE_EPOCH, &(MEM_SIZE as u64).to_le_bytes(), 0)
            .status,
        Some(Status::OutOfRange)
    );
    ok(&g.read(EP0, va, 8));
    // Replace the page without invalidating: the ATC is stale.
    let new = g.alloc_page();
    g.map(va, new, PTE_URW | 0x60);
    let audit = |g: &mut Guest, pasid: u32, max: u32| {
        let a = w::OracleAudit {
            pasid: pasid.into(),
            max_records: max.into(),
            va: va.into(),
            len: 0x1000.into(),
        };
        g.request(req::ORACLE_AUDIT, a.as_slice(), 72 + 64 * max as usize)
    };
    let r = audit(&mut g, PASID, 8);
    ok(&r);
    let o: w::OracleResp = r.obj();
    assert!(o.count[4].to_native() >= 1, "{o:?}");
    let n = o.nrecords.to_native() as usize;
    assert!(n >= 1);
    let recs: Vec<w::Finding> = (0..n)
        .map(|i| w::read_obj(&r.body[72 + 64 * i..]).unwrap())
        .collect();
    let atc = recs
        .iter()
        .find(|f| f.source.to_native() == 1)
        .expect("an ATC record");
    assert_eq!(atc.rule.to_native(), 5);
    assert_eq!(atc.devid.to_native(), EP0);
    assert_eq!(atc.cached_pa.to_native(), pas[0]);
    assert_eq!(atc.epoch.to_native(), 42);
    assert_eq!(audit(&mut g, 1 << 16, 1).status, Some(Status::OutOfRange));
    assert_eq!(audit(&mut g, PASID, 65).status, Some(Status::BadRequest));
    // An access through the stale entry: R1 (stale page).
    ok(&g.read(EP0, va, 8));
    let rd = |g: &mut Guest, max: u32, flags: u32| {
        let o = w::OracleRead {
            max_records: max.into(),
            flags: flags.into(),
        };
        g.request(req::ORACLE_READ, o.as_slice(), 72 + 64 * max as usize)
    };
    let r = rd(&mut g, 4, 1);
    ok(&r);
    let o: w::OracleResp = r.obj();
    assert_eq!(o.count[0].to_native(), 1, "R1: {o:?}");
    assert_eq!(o.nrecords.to_native(), 1);
    let f: w::Finding = w::read_obj(&r.body[72..]).unwrap();
    assert_eq!(
        (f.rule.to_native(), f.va.to_native(), f.epoch.to_native()),
        (1, va, 42)
    );
    assert_eq!(r.used as usize, 8 + 72 + 64);
    // Cleared.
    let o: w::OracleResp = rd(&mut g, 4, 0).obj();
    assert_eq!(o.count[0].to_native(), 0);
    assert_eq!(rd(&mut g, 65, 0).status, Some(Status::BadRequest));
    assert_eq!(rd(&mut g, 1, 2).status, Some(Status::BadRequest));
    // After the invalidation the audit is clean.
    ok(&g.commands(&flush_cmds(EP0, 1, None)));
    let o: w::OracleResp = audit(&mut g, PASID, 8).obj();
    assert_eq!(o.count[4].to_native(), 0, "{o:?}");
}

#[test]
fn stats_counters() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    let a = g.stats();
    assert_eq!(a.len(), stat::COUNT);
    let b = g.stats();
    assert_eq!(b[stat::REQUESTS], a[stat::REQUESTS] + 1);
    // Only what fits in the writable part.
    let r = g.request(req::STATS, &[], 8 + 8 * 3);
    ok(&r);
    assert_eq!(u32::from_le_bytes(r.body[..4].try_into().unwrap()), 3);
    assert_eq!(r.used, 8 + 8 + 24);
    // No room for the stats header.
    assert_eq!(
        g.request(req::STATS, &[], 4).status,
        Some(Status::BadRequest)
    );
}
