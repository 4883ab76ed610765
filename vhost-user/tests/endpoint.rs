//! ENDPOINT requests: translate, read and write through the ATC, the
//! checks on their fields, page requests answered, timed out or refused,
//! and faulting accesses that do not hold up the others.

mod common;

use std::time::{Duration, Instant};

use common::*;
use iommu_dev::{AtsCompletion, Command, PprEntry};
use vhost_device_amdvi::virtio_amdvi::{self as w, ep, req, Status};
use vm_memory::{ByteValued, Bytes, GuestAddress};

#[test]
fn endpoint_translate_read_write() {
    let (_d, mut g) = ready(CFG);
    let va = 0x7f00_0000_0000u64;
    let pas = g.map_range(va, 2);
    g.mem
        .write_slice(&[0x5a; 4096], GuestAddress(pas[0]))
        .unwrap();
    // TRANSLATE: an ATS completion with R, W and the page.
    let r = g.endpoint(EP0, ep::OP_TRANSLATE, 0, PASID, va + 0x123, 0, &[]);
    ok(&r);
    let resp: w::EndpointResp = r.obj();
    let c = AtsCompletion::decode(resp.ats.to_native());
    assert!(c.r && c.w, "{c:?}");
    assert_eq!(c.pa_base, pas[0]);
    assert_eq!(r.used, 8 + 16);
    // NO_WRITE: read-only completion.
    let r = g.endpoint(EP1, ep::OP_TRANSLATE, ep::F_NO_WRITE, PASID, va, 0, &[]);
    let c = AtsCompletion::decode(r.obj::<w::EndpointResp>().ats.to_native());
    assert!(c.r && !c.w, "{c:?}");
    // WRITE across the page boundary, then READ it back.
    let data: Vec<u8> = (0..64u8).collect();
    let r = g.write(EP0, va + 0x1000 - 32, &data);
    ok(&r);
    assert_eq!(r.used, 8 + 16, "no data written back for WRITE");
    let mut host = [0u8; 32];
    g.mem.read_slice(&mut host, GuestAddress(pas[1])).unwrap();
    assert_eq!(
        &host[..],
        &data[32..],
        "second half landed in the second page"
    );
    let r = g.read(EP1, va + 0x1000 - 32, 64);
    ok(&r);
    assert_eq!(r.used, 8 + 16 + 64);
    assert_eq!(&r.body[16..], &data[..]);
    let before = g.stats();
    let r = g.read(EP0, va, 8);
    ok(&r);
    assert_eq!(&r.body[16..], &[0x5a; 8]);
    let after = g.stats();
    assert_eq!(after[stat::ATC_HITS], before[stat::ATC_HITS] + 1, "ATC hit");
    // The walker set A and D.
    let at = g.pte_gpa(va + 0x1000);
    let pte = g.read_u64(at);
    assert_eq!(pte & 0x60, 0x60, "A and D set: {pte:#x}");
}

#[test]
fn endpoint_bad_input() {
    let (_d, mut g) = ready(CFG);
    let va = 0x1000_0000u64;
    g.map_range(va, 1);
    let st = |r: Reply| r.status;
    // PASID wider than 16 bits, device id not an endpoint.
    assert_eq!(
        st(g.endpoint(EP0, ep::OP_READ, 0, 1 << 16, va, 8, &[])),
        Some(Status::OutOfRange)
    );
    assert_eq!(
        st(g.endpoint(0x0012, ep::OP_READ, 0, PASID, va, 8, &[])),
        Some(Status::OutOfRange)
    );
    // Unknown op, bad lengths, unknown flag, reserved field.
    assert_eq!(
        st(g.endpoint(EP0, 3, 0, PASID, va, 8, &[])),
        Some(Status::BadRequest)
    );
    assert_eq!(
        st(g.endpoint(EP0, ep::OP_READ, 0, PASID, va, 0, &[])),
        Some(Status::BadRequest)
    );
    assert_eq!(
        st(g.endpoint(EP0, ep::OP_TRANSLATE, 0, PASID, va, 8, &[])),
        Some(Status::BadRequest)
    );
    assert_eq!(
        st(g.endpoint(EP0, ep::OP_READ, 0x10, PASID, va, 8, &[])),
        Some(Status::BadRequest)
    );
    assert_eq!(
        st(g.endpoint(EP0, ep::OP_READ, 0, PASID, va, ep::MAX_LEN + 1, &[])),
        Some(Status::BadRequest)
    );
    // WRITE whose data does not match len.
    assert_eq!(
        st(g.endpoint(EP0, ep::OP_WRITE, 0, PASID, va, 8, &[1; 4])),
        Some(Status::BadRequest)
    );
    let e = w::Endpoint {
        devid: EP0.into(),
        op: ep::OP_READ,
        pasid: PASID.into(),
        va: va.into(),
        len: 8.into(),
        reserved: 1.into(),
        ..Default::default()
    };
    assert_eq!(
        g.request(req::ENDPOINT, e.as_slice(), 24).status,
        Some(Status::BadRequest)
    );
    // READ whose writable part cannot hold the data.
    let e = w::Endpoint {
        reserved: 0.into(),
        ..e
    };
    assert_eq!(
        g.request(req::ENDPOINT, e.as_slice(), 16 + 4).status,
        Some(Status::BadRequest)
    );
    // Unmapped page with NO_PRI: translation fault at once.
    let r = g.endpoint(EP0, ep::OP_READ, ep::F_NO_PRI, PASID, 0x2000_0000, 8, &[]);
    assert_eq!(r.status, Some(Status::TranslationFault));
    // A fault is not an error for TRANSLATE: R=W=0.
    let r = g.endpoint(EP0, ep::OP_TRANSLATE, 0, PASID, 0x2000_0000, 0, &[]);
    ok(&r);
    assert!(AtsCompletion::decode(r.obj::<w::EndpointResp>().ats.to_native()).is_fault());
    // A DTE without ATS allowed: the IOMMU refuses (event logged).
    let dte = DEVTAB + 32 * u64::from(EP1) + 8;
    let q1: u64 = g.read_u64(dte);
    g.mem.write_obj(q1 & !(1 << 32), GuestAddress(dte)).unwrap();
    ok(&g.commands(&[Command::InvalidateDevtabEntry { devid: EP1 }]));
    let r = g.read(EP1, va, 8);
    assert_eq!(r.status, Some(Status::DeviceError));
}

#[test]
fn pri_round_trip() {
    let (_d, mut g) = ready(CFG);
    g.post_event_buffers(4, 24 * 8);
    let va = 0x6000_0000u64;
    // READ of an unmapped page: a page request goes out on the event queue.
    let t = g.endpoint_ticket(EP0, ep::OP_READ, 0, PASID, va + 0x10, 16, &[]);
    let ev = g.events(1, Duration::from_secs(5));
    assert_eq!(ev.len(), 1, "one PPR record");
    assert_eq!(ev[0].kind.to_native(), w::EVREC_PPR);
    let p = PprEntry::decode(&ev[0].entry);
    assert_eq!((p.devid, p.pasid, p.addr), (EP0, PASID, va));
    // The request queue keeps flowing while the access waits.
    let s = g.stats();
    assert_eq!(s[stat::PAGE_REQUESTS], 1);
    assert!(g.reqq.in_flight() >= 1, "the READ is still pending");
    // The guest maps the page and answers.
    let pa = g.alloc_page();
    g.mem.write_slice(&[0xc3; 64], GuestAddress(pa)).unwrap();
    g.map(va, pa, PTE_URW);
    let r = g.commands(&[Command::CompletePprRequest {
        devid: EP0,
        pasid: PASID,
        gn: true,
        tag: p.tag & 0x1ff,
        code: 0,
    }]);
    ok(&r);
    let r = g.wait(t);
    ok(&r);
    let resp: w::EndpointResp = r.obj();
    assert_eq!(resp.page_requests.to_native(), 1);
    assert_eq!(&r.body[16..], &[0xc3; 16]);
    assert_eq!(g.stats()[stat::PRG_RESPONSES], 1);
}

#[test]
fn pri_timeout_invalid_answer_and_ppr_off() {
    let (_d, mut g) = ready("pri_timeout_ms = 200\n");
    g.post_event_buffers(8, 24 * 8);
    // Nobody answers: TIMEOUT.
    let start = Instant::now();
    let r = g.read(EP0, 0x6100_0000, 8);
    assert_eq!(r.status, Some(Status::Timeout));
    assert!(start.elapsed() >= Duration::from_millis(190));
    let ev = g.events(1, Duration::from_secs(2));
    assert_eq!(ev[0].kind.to_native(), w::EVREC_PPR);
    // Answered with Invalid Request: TRANSLATION_FAULT.
    let t = g.endpoint_ticket(EP1, ep::OP_WRITE, 0, PASID, 0x6200_0000, 8, &[1; 8]);
    let ev = g.events(1, Duration::from_secs(2));
    let p = PprEntry::decode(&ev[0].entry);
    assert_eq!(p.devid, EP1);
    assert_ne!(p.flags & (1 << 5), 0, "write access requested");
    ok(&g.commands(&[Command::CompletePprRequest {
        devid: EP1,
        pasid: PASID,
        gn: true,
        tag: p.tag & 0x1ff,
        code: 1,
    }]));
    assert_eq!(g.wait(t).status, Some(Status::TranslationFault));
    // PPR log off: the page request is answered as failed at once and an
    // INVALID_PPR_REQUEST event is logged.
    assert_eq!(
        g.set_devtab(devtab_reg(), CTRL_ALL & !CTRL_PPR_LOG_EN),
        Some(Status::Ok)
    );
    let r = g.read(EP0, 0x6300_0000, 8);
    assert_eq!(r.status, Some(Status::TranslationFault));
    let ev = g.events(1, Duration::from_secs(2));
    assert_eq!(ev[0].kind.to_native(), w::EVREC_EVENT);
    assert_eq!(
        u64::from_le_bytes(ev[0].entry[..8].try_into().unwrap()) >> 60,
        9
    );
}

#[test]
fn many_concurrent_faulting_accesses_do_not_block_others() {
    let (_d, mut g) = ready("pri_timeout_ms = 1000\n");
    g.post_event_buffers(8, 24 * 16);
    let va = 0x4000_0000u64;
    g.map_range(va, 1);
    let faulting: Vec<Ticket> = (0..8)
        .map(|i| g.endpoint_ticket(EP0, ep::OP_READ, 0, PASID, 0x6000_0000 + 0x1000 * i, 8, &[]))
        .collect();
    let start = Instant::now();
    let r = g.read(EP1, va, 8);
    ok(&r);
    assert!(
        start.elapsed() < Duration::from_millis(700),
        "{:?}",
        start.elapsed()
    );
    for t in faulting {
        assert_eq!(g.wait(t).status, Some(Status::Timeout));
    }
}
