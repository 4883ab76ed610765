//! Integration tests: the daemon on a Unix socket, this process as the
//! vhost-user frontend with memfd guest memory and hand-made virtqueues.

mod common;

use std::time::{Duration, Instant};

use common::*;
use iommu_dev::{AtsCompletion, Command, PprEntry};
use vhost::VhostBackend;
use vhost_device_amdvi::virtio_amdvi::{self as w, ep, req, Status};
use vm_memory::{ByteValued, Bytes, GuestAddress};

const CFG: &str = "pri_timeout_ms = 1500\n";

fn ok(r: &Reply) {
    assert_eq!(r.status, Some(Status::Ok), "{r:?}");
}

fn cw(addr: u64, data: u64) -> Command {
    Command::CompletionWait {
        store: true,
        interrupt: false,
        flush: false,
        addr,
        data,
    }
}

#[test]
fn config_space_features_and_info() {
    let d = Daemon::start(
        "endpoints = [0x10, 0x11, 0x20]\natc_entries = 32\nmax_streams = 5\npri_timeout_ms = 777\n\
         [[fault]]\npoint = \"atc_fill\"\naction = \"drop\"\nprobability = 0.5\n",
    );
    let mut g = Guest::connect(&d);
    let c = g.config();
    assert_eq!(u32::from_le_bytes(c[..4].try_into().unwrap()), 0x5644_4d41);
    assert_eq!(u32::from_le_bytes(c[4..].try_into().unwrap()), 1);
    assert_eq!(&c[..4], b"AMDV");
    let info = g.info();
    assert_eq!(info.num_endpoints.to_native(), 3);
    let devids: Vec<u16> = info.endpoint_devid.iter().map(|d| d.to_native()).collect();
    assert_eq!(&devids[..4], &[0x10, 0x11, 0x20, 0xffff]);
    assert_eq!(
        info.flags.to_native(),
        w::INFO_F_ORACLE | w::INFO_F_FIVE_LEVEL
    );
    assert_eq!(info.atc_entries.to_native(), 32);
    assert_eq!(info.max_streams.to_native(), 5);
    assert_eq!(info.pri_timeout_ms.to_native(), 777);
    let efr = info.efr.to_native();
    assert_eq!((efr >> 32) & 0x1f, 15, "PASmax: 16-bit PASIDs");
    assert_ne!(efr & 2, 0, "PPRSup");
    let rules = String::from_utf8_lossy(&info.fault_rules);
    let rules = rules.trim_end_matches('\0');
    assert!(rules.starts_with("atc_fill drop p=0.5"), "{rules}");
    assert!(info.fault_rules.contains(&0), "NUL-terminated");
    drop(g);
    let t = d.stop();
    assert_eq!(t.connections, 1);
}

#[test]
fn requests_before_set_devtab_are_not_ready() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    let r = g.commands(&[cw(STORE_AREA, 1)]);
    assert_eq!(r.status, Some(Status::NotReady));
    assert_eq!(g.read_u64(STORE_AREA), 0, "no store while not ready");
    let r = g.read(EP0, 0x4000_0000, 8);
    assert_eq!(r.status, Some(Status::NotReady));
    let s = w::StreamStart {
        devid: EP0.into(),
        va: 0x4000_0000.into(),
        len: 4096.into(),
        stride: 8.into(),
        read_weight: 1,
        ..Default::default()
    };
    let r = g.request(req::STREAM_START, s.as_slice(), 8);
    assert_eq!(r.status, Some(Status::NotReady));
    // With IommuEn clear the unit stays off.
    g.setup_iommu();
    assert_eq!(
        g.set_devtab(devtab_reg(), CTRL_ALL & !CTRL_IOMMU_EN),
        Some(Status::Ok)
    );
    assert_eq!(g.read(EP0, 0x4000_0000, 8).status, Some(Status::NotReady));
    assert_eq!(g.stats().len(), stat::COUNT);
}

#[test]
fn set_devtab_checks() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    // Device table outside RAM (64 MiB guest), or running past its end.
    let outside = iommu_dev::DevTableBase::encode(0x1_0000_0000, 1);
    assert_eq!(g.set_devtab(outside, CTRL_ALL), Some(Status::OutOfRange));
    let past_end = iommu_dev::DevTableBase::encode(MEM_SIZE as u64 - 0x1000, 2);
    assert_eq!(g.set_devtab(past_end, CTRL_ALL), Some(Status::OutOfRange));
    // Reserved bits in the base register and in Control.
    assert_eq!(
        g.set_devtab(devtab_reg() | 1 << 9, CTRL_ALL),
        Some(Status::BadRequest)
    );
    assert_eq!(
        g.set_devtab(devtab_reg(), CTRL_ALL | 1 << 1),
        Some(Status::BadRequest)
    );
    assert_eq!(
        g.set_devtab(devtab_reg(), CTRL_ALL | 1 << 40),
        Some(Status::BadRequest)
    );
    // Accepted and ignored bits: EventIntEn, ComWaitIntEn, InvTimeOut, Coherent, CmdBufEn, PPRIntEn.
    let ignored = 1 << 3 | 1 << 4 | 0b111 << 5 | 1 << 10 | 1 << 12 | 1 << 14;
    assert_eq!(
        g.set_devtab(devtab_reg(), CTRL_ALL | ignored),
        Some(Status::Ok)
    );
    // A short body is malformed.
    let r = g.request(req::SET_DEVTAB, &[0; 8], 0);
    assert_eq!(r.status, Some(Status::BadRequest));
}

#[test]
fn endpoint_translate_read_write() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    g.setup_iommu();
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
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    g.setup_iommu();
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
fn commands_illegal_reserved_and_event() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    g.post_event_buffers(4, 24 * 4);
    let good = Command::InvalidateDevtabEntry { devid: EP0 }.encode();
    let mut reserved = good;
    reserved[2] = 1; // bit 16: reserved in INVALIDATE_DEVTAB_ENTRY
    let t = g.commands_ticket(&[good, reserved, cw(STORE_AREA, 7).encode()]);
    let cmd1_gpa = t.readable_gpa() + 8 + 8 + 16;
    let r = g.wait(t);
    assert_eq!(r.status, Some(Status::IllegalCommand));
    let resp: w::CommandsResp = r.obj();
    assert_eq!(resp.executed.to_native(), 1);
    assert_eq!(resp.illegal_gpa.to_native(), cmd1_gpa);
    assert_eq!(
        g.read_u64(STORE_AREA),
        0,
        "the batch stopped before COMPLETION_WAIT"
    );
    // The event queue carries ILLEGAL_COMMAND_ERROR with the command's GPA.
    let ev = g.events(1, Duration::from_secs(5));
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind.to_native(), w::EVREC_EVENT);
    assert_eq!(ev[0].dropped.to_native(), 0);
    let lo = u64::from_le_bytes(ev[0].entry[..8].try_into().unwrap());
    let hi = u64::from_le_bytes(ev[0].entry[8..].try_into().unwrap());
    assert_eq!(lo >> 60, 5, "ILLEGAL_COMMAND_ERROR");
    assert_eq!(hi, cmd1_gpa);
    // The next request starts afresh.
    let r = g.commands(&[cw(STORE_AREA, 8)]);
    ok(&r);
    assert_eq!(g.read_u64(STORE_AREA), 8);
    // Unknown opcode; store address outside RAM.
    let r = g.commands_ticket(&[[0u8; 16]]);
    assert_eq!(g.wait(r).status, Some(Status::IllegalCommand));
    let r = g.commands(&[cw(MEM_SIZE as u64 + 0x1000, 1)]);
    assert_eq!(r.status, Some(Status::IllegalCommand));
    // Malformed batches: count 0, count and length disagree, too many, reserved.
    let bad = |g: &mut Guest, body: Vec<u8>| g.request(req::COMMANDS, &body, 16).status;
    assert_eq!(
        bad(&mut g, [0u32.to_le_bytes(), 0u32.to_le_bytes()].concat()),
        Some(Status::BadRequest)
    );
    let mut b = [2u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    b.extend_from_slice(&good);
    assert_eq!(bad(&mut g, b), Some(Status::BadRequest));
    let mut b = [1u32.to_le_bytes(), 1u32.to_le_bytes()].concat();
    b.extend_from_slice(&good);
    assert_eq!(bad(&mut g, b), Some(Status::BadRequest));
    let mut b = [513u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    b.extend(std::iter::repeat_n(good, 513).flatten());
    assert_eq!(bad(&mut g, b), Some(Status::BadRequest));
    let s = g.stats();
    assert!(s[stat::ILLEGAL_COMMANDS] >= 3, "{s:?}");
}

#[test]
fn commands_split_across_descriptors() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    // Bodies may be split across descriptors in any way: 5-byte pieces.
    let mut b = [3u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    for c in [
        Command::InvalidateDevtabEntry { devid: EP0 },
        Command::InvalidateIommuAll,
        cw(STORE_AREA + 8, 0x1234_5678_9abc_def0),
    ] {
        b.extend_from_slice(&c.encode());
    }
    let t = g.submit_split(req::COMMANDS, &b, 16, Some(5));
    let r = g.wait(t);
    ok(&r);
    let resp: w::CommandsResp = r.obj();
    assert_eq!(resp.executed.to_native(), 3);
    assert_eq!(g.read_u64(STORE_AREA + 8), 0x1234_5678_9abc_def0);
}

#[test]
fn indirect_descriptors() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    // VIRTIO_RING_F_INDIRECT_DESC: one descriptor pointing at a table of
    // two (readable header, writable response).
    let (table, hdr, resp) = (SCRATCH, SCRATCH + 0x1000, SCRATCH + 0x2000);
    g.mem
        .write_slice(
            &[req::INFO.to_le_bytes(), 0u32.to_le_bytes()].concat(),
            GuestAddress(hdr),
        )
        .unwrap();
    let descs: [(u64, u32, u16, u16); 2] = [(hdr, 8, 1, 1), (resp, 8 + 328, 2, 0)];
    for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
        let at = table + 16 * i as u64;
        g.mem.write_obj(addr, GuestAddress(at)).unwrap();
        g.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        g.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        g.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }
    let h = g.submit_indirect(table, 32);
    assert_eq!(g.wait_raw(h), 8 + 328);
    assert_eq!(g.mem.read_obj::<u32>(GuestAddress(resp)).unwrap(), 0, "OK");
    assert_eq!(
        g.mem.read_obj::<u32>(GuestAddress(resp + 8 + 8)).unwrap(),
        2,
        "two endpoints"
    );
}

#[test]
fn completion_wait_store_visible_when_response_arrives() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    let va = 0x5000_0000u64;
    g.map_range(va, 1);
    ok(&g.read(EP0, va, 8));
    for i in 1..=20u64 {
        let r = g.commands(&flush_cmds(EP0, 1, Some((STORE_AREA, i))));
        ok(&r);
        assert_eq!(g.read_u64(STORE_AREA), i, "store visible with the response");
    }
    let s = g.stats();
    assert_eq!(s[stat::COMPLETION_WAITS], 20);
    assert_eq!(s[stat::ATC_INVALIDATIONS], 20);
}

#[test]
fn completion_wait_store_waits_for_delayed_invalidation() {
    let d = Daemon::start(
        "[[fault]]\npoint = \"atc_invalidate\"\naction = \"delay\"\ndelay_us = 300000\n",
    );
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    let va = 0x5000_0000u64;
    g.map_range(va, 1);
    ok(&g.read(EP0, va, 8));
    let raw: Vec<[u8; 16]> = flush_cmds(EP0, 1, Some((STORE_AREA, 0xabc)))
        .iter()
        .map(Command::encode)
        .collect();
    let start = Instant::now();
    let t = g.commands_ticket(&raw);
    // Poll the store word as a guest would.
    let mut seen_at = None;
    while start.elapsed() < Duration::from_secs(5) {
        if g.read_u64(STORE_AREA) == 0xabc {
            seen_at = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let seen_at = seen_at.expect("store never landed");
    assert!(
        seen_at >= Duration::from_millis(280),
        "store landed after {seen_at:?}, before the delayed invalidation finished"
    );
    let r = g.wait(t);
    ok(&r);
    assert_eq!(r.obj::<w::CommandsResp>().executed.to_native(), 3);
    assert_eq!(g.stats()[stat::INJECTED_FAULTS], 1);
}

#[test]
fn pri_round_trip() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    g.setup_iommu();
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
    let d = Daemon::start("pri_timeout_ms = 200\n");
    let mut g = Guest::connect(&d);
    g.setup_iommu();
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
fn event_queue_without_buffers_holds_bounded_and_counts_drops() {
    let d = Daemon::start("event_log_entries = 4\n");
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    // Ten ILLEGAL_COMMAND_ERROR events with no buffer posted.
    for _ in 0..10 {
        let t = g.commands_ticket(&[[0u8; 16]]);
        assert_eq!(g.wait(t).status, Some(Status::IllegalCommand));
    }
    let s = g.stats();
    assert_eq!(s[stat::EVENTS_LOGGED], 4, "held: bounded");
    assert_eq!(s[stat::EVENTS_DROPPED], 6, "overflow counted");
    // A buffer too short for one record comes back empty.
    let h = g.evq.add(&g.mem, &[(EVBUF_BASE + 0x10_0000, 16, true)]);
    assert_eq!(g.event_used(h, Duration::from_secs(5)), Some(0));
    // Buffers posted: the four held entries arrive, oldest first, in one buffer.
    g.post_event_buffers(2, 24 * 8);
    let ev = g.events(4, Duration::from_secs(5));
    assert_eq!(ev.len(), 4);
    assert!(ev
        .iter()
        .all(|e| e.kind.to_native() == w::EVREC_EVENT && e.dropped.to_native() == 0));
    let gpas: Vec<u64> = ev
        .iter()
        .map(|e| u64::from_le_bytes(e.entry[8..].try_into().unwrap()))
        .collect();
    assert!(ev
        .iter()
        .all(|e| u64::from_le_bytes(e.entry[..8].try_into().unwrap()) >> 60 == 5));
    assert!(gpas.iter().all(|&g| g >= SLOTS_BASE), "{gpas:x?}");
    // The next entry reports the six dropped before it.
    let t = g.commands_ticket(&[[0u8; 16]]);
    g.wait(t);
    let ev = g.events(1, Duration::from_secs(5));
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].dropped.to_native(), 6);
    // A device-readable event buffer is malformed: returned empty, counted.
    let before = g.stats()[stat::BAD_CHAINS];
    let t = g.commands_ticket(&[[0u8; 16]]);
    g.wait(t);
    let h = g.evq.add(&g.mem, &[(EVBUF_BASE + 0x10_0000, 48, false)]);
    assert_eq!(g.event_used(h, Duration::from_secs(5)), Some(0));
    assert_eq!(g.stats()[stat::BAD_CHAINS], before + 1);
}

fn stream(devid: u16, va: u64, len: u64, weights: [u8; 3], flags: u8) -> w::StreamStart {
    w::StreamStart {
        devid: devid.into(),
        flags,
        pasid: PASID.into(),
        va: va.into(),
        len: len.into(),
        stride: 64.into(),
        read_weight: weights[0],
        write_weight: weights[1],
        translate_weight: weights[2],
        write_value: 0x1000.into(),
        ..Default::default()
    }
}

fn stop_stream(g: &mut Guest, id: u32, flags: u32) -> Reply {
    let s = w::StreamStop {
        stream_id: id.into(),
        flags: flags.into(),
    };
    g.request(req::STREAM_STOP, s.as_slice(), 80)
}

#[test]
fn stream_runs_while_invalidations_arrive() {
    let d = Daemon::start("max_streams = 2\n");
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    let va = 0x7000_0000u64;
    let pas = g.map_range(va, 4);
    let r = g.request(
        req::STREAM_START,
        stream(EP0, va, 0x4000, [2, 1, 1], ep::F_NO_PRI).as_slice(),
        8,
    );
    ok(&r);
    let id = r.obj::<w::StreamStartResp>().stream_id.to_native();
    // Invalidations and COMPLETION_WAITs keep flowing while it runs.
    for i in 1..=30u64 {
        let r = g.commands(&flush_cmds(EP0, 1, Some((STORE_AREA, i))));
        ok(&r);
        assert_eq!(g.read_u64(STORE_AREA), i);
    }
    let r = stop_stream(&mut g, id, w::STREAM_STOP_F_REPORT);
    ok(&r);
    let c: w::StreamCounts = r.obj();
    assert_eq!(c.running.to_native(), 1);
    std::thread::sleep(Duration::from_millis(20));
    let r = stop_stream(&mut g, id, 0);
    ok(&r);
    let c: w::StreamCounts = r.obj();
    assert_eq!(c.running.to_native(), 0);
    let (rd, wr, tr) = (
        c.reads.to_native(),
        c.writes.to_native(),
        c.translations.to_native(),
    );
    assert!(rd > 0 && wr > 0 && tr > 0, "{c:?}");
    assert_eq!(c.faults.to_native(), 0, "{c:?}");
    assert_eq!(c.errors.to_native(), 0, "{c:?}");
    assert!(
        c.atc_misses.to_native() > 0 && c.atc_hits.to_native() > 0,
        "{c:?}"
    );
    assert!(c.elapsed_us.to_native() > 0);
    // Written values are write_value + n.
    let first = g.read_u64(pas[0]);
    assert!(first >= 0x1000 && first < 0x1000 + wr, "{first:#x}");
    // No stale translation was ever used: the tables never changed.
    let o = w::OracleRead {
        max_records: 0.into(),
        flags: 0.into(),
    };
    let r = g.request(req::ORACLE_READ, o.as_slice(), 72);
    ok(&r);
    assert!(r
        .obj::<w::OracleResp>()
        .count
        .iter()
        .all(|c| c.to_native() == 0));
    // Released: gone.
    assert_eq!(stop_stream(&mut g, id, 0).status, Some(Status::OutOfRange));
    assert_eq!(stop_stream(&mut g, id, 1).status, Some(Status::OutOfRange));
}

#[test]
fn stream_limits_and_bad_parameters() {
    let d = Daemon::start("max_streams = 2\n");
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    let va = 0x7000_0000u64;
    g.map_range(va, 1);
    let start = |g: &mut Guest, s: w::StreamStart| g.request(req::STREAM_START, s.as_slice(), 8);
    let good = stream(EP0, va, 0x1000, [1, 0, 0], 0);
    let bad = [
        w::StreamStart {
            va: (va + 4).into(),
            ..good
        },
        w::StreamStart {
            len: 4.into(),
            ..good
        },
        w::StreamStart {
            stride: 12.into(),
            ..good
        },
        w::StreamStart {
            stride: 0.into(),
            ..good
        },
        w::StreamStart {
            read_weight: 0,
            ..good
        },
        w::StreamStart {
            flags: 0x80,
            ..good
        },
        w::StreamStart { mode: 2, ..good },
    ];
    for s in bad {
        assert_eq!(start(&mut g, s).status, Some(Status::BadRequest), "{s:?}");
    }
    assert_eq!(
        start(
            &mut g,
            w::StreamStart {
                pasid: (1 << 16).into(),
                ..good
            }
        )
        .status,
        Some(Status::OutOfRange)
    );
    assert_eq!(
        start(
            &mut g,
            w::StreamStart {
                devid: 0x33.into(),
                ..good
            }
        )
        .status,
        Some(Status::OutOfRange)
    );
    // A throttled stream with a duration ends by itself; its counts stay readable.
    let s = w::StreamStart {
        rate: 1000.into(),
        duration_ms: 50.into(),
        ..good
    };
    let r = start(&mut g, s);
    ok(&r);
    let a = r.obj::<w::StreamStartResp>().stream_id.to_native();
    let r = start(&mut g, good);
    ok(&r);
    let b = r.obj::<w::StreamStartResp>().stream_id.to_native();
    assert_ne!(a, b);
    assert_eq!(start(&mut g, good).status, Some(Status::NoResource));
    std::thread::sleep(Duration::from_millis(150));
    let c: w::StreamCounts = stop_stream(&mut g, a, 1).obj();
    assert_eq!(c.running.to_native(), 0, "duration over");
    let n = c.reads.to_native();
    // Throttled: at most about 50 accesses at 1000/s in 50 ms (fewer on a loaded machine).
    assert!((1..=80).contains(&n), "{n} accesses");
    // Releasing one frees a slot.
    ok(&stop_stream(&mut g, a, 0));
    ok(&start(&mut g, good));
    assert_eq!(stop_stream(&mut g, b, 2).status, Some(Status::BadRequest));
    assert_eq!(stop_stream(&mut g, 999, 0).status, Some(Status::OutOfRange));
}

#[test]
fn oracle_read_audit_epoch() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    g.setup_iommu();
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

#[test]
fn malformed_chains() {
    let d = Daemon::start(CFG);
    let mut g = Guest::connect(&d);
    let hdr = |ty: u32, rsv: u32| [ty.to_le_bytes(), rsv.to_le_bytes()].concat();
    let status_at =
        |g: &Guest, gpa: u64| Status::from_u32(g.mem.read_obj::<u32>(GuestAddress(gpa)).unwrap());
    let (rd, wr) = (SCRATCH, SCRATCH + 0x10_0000);
    // Unknown type; reserved header field.
    assert_eq!(g.request(99, &[], 0).status, Some(Status::Unsupported));
    g.mem
        .write_slice(&hdr(req::INFO, 1), GuestAddress(rd))
        .unwrap();
    let h = g.submit_raw(&[(rd, 8, false), (wr, 8 + 328, true)]);
    assert_eq!(g.wait_raw(h), 8);
    assert_eq!(status_at(&g, wr), Some(Status::BadRequest));
    // Readable part too short (SET_DEVTAB without its body) or longer than the type's body.
    assert_eq!(
        g.request(req::SET_DEVTAB, &[], 0).status,
        Some(Status::BadRequest)
    );
    assert_eq!(
        g.request(req::INFO, &[0; 8], 328).status,
        Some(Status::BadRequest)
    );
    // Header itself cut short.
    let h = g.submit_raw(&[(rd, 4, false), (wr, 8, true)]);
    assert_eq!(g.wait_raw(h), 8);
    assert_eq!(status_at(&g, wr), Some(Status::BadRequest));
    // Wrong direction: a readable descriptor after a writable one.
    g.mem
        .write_slice(&hdr(req::INFO, 0), GuestAddress(rd))
        .unwrap();
    let h = g.submit_raw(&[(wr, 8, true), (rd, 8, false), (wr + 8, 328, true)]);
    assert_eq!(g.wait_raw(h), 8);
    assert_eq!(status_at(&g, wr), Some(Status::BadRequest));
    // Readable part too long (more than header + ENDPOINT body + 64 KiB).
    let h = g.submit_raw(&[(rd, 40000, false), (rd, 40000, false), (wr, 8, true)]);
    assert_eq!(g.wait_raw(h), 8);
    assert_eq!(status_at(&g, wr), Some(Status::BadRequest));
    // Readable descriptor outside guest memory.
    let h = g.submit_raw(&[(MEM_SIZE as u64 - 4, 8, false), (wr, 8 + 328, true)]);
    assert_eq!(g.wait_raw(h), 8);
    assert_eq!(status_at(&g, wr), Some(Status::BadRequest));
    let h = g.submit_raw(&[(u64::MAX - 3, 8, false), (wr, 8, true)]);
    assert_eq!(g.wait_raw(h), 8);
    // Chains that cannot even take a status: used length 0, counted.
    let before = g.stats()[stat::BAD_CHAINS];
    let h = g.submit_raw(&[(rd, 8, false), (wr, 4, true)]);
    assert_eq!(g.wait_raw(h), 0);
    let h = g.submit_raw(&[(rd, 8, false)]);
    assert_eq!(g.wait_raw(h), 0);
    let h = g.submit_raw(&[(rd, 8, false), (MEM_SIZE as u64, 8, true)]);
    assert_eq!(g.wait_raw(h), 0);
    assert_eq!(g.stats()[stat::BAD_CHAINS], before + 3);
    // Still serving.
    assert_eq!(g.info().num_endpoints.to_native(), 2);
}

#[test]
fn second_frontend_after_disconnect_gets_a_fresh_device() {
    let d = Daemon::start(CFG);
    {
        let mut g = Guest::connect(&d);
        g.setup_iommu();
        let va = 0x4000_0000u64;
        g.map_range(va, 1);
        ok(&g.read(EP0, va, 8));
        let r = g.request(
            req::STREAM_START,
            stream(EP0, va, 0x1000, [1, 1, 0], 0).as_slice(),
            8,
        );
        ok(&r);
        // Disconnect with the stream running.
    }
    let mut g = Guest::connect_with(&d, false);
    assert_eq!(g.info().num_endpoints.to_native(), 2);
    assert_eq!(
        g.read(EP0, 0x4000_0000, 8).status,
        Some(Status::NotReady),
        "state reset"
    );
    assert_eq!(g.stats()[stat::ATC_HITS], 0, "fresh counters");
    g.setup_iommu();
    let va = 0x4000_0000u64;
    g.map_range(va, 1);
    ok(&g.read(EP0, va, 8));
    drop(g);
    let t = d.stop();
    assert_eq!(t.connections, 2);
    assert!(t.counters["requests"] >= 8, "{t:?}");
    assert!(t.accesses >= 2);
}

#[test]
fn guest_device_reset_resets_the_iommu() {
    let d = Daemon::start("pri_timeout_ms = 5000\n");
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    let va = 0x4000_0000u64;
    g.map_range(va, 1);
    let r = g.request(
        req::STREAM_START,
        stream(EP0, va, 0x1000, [1, 0, 0], 0).as_slice(),
        8,
    );
    ok(&r);
    let id = r.obj::<w::StreamStartResp>().stream_id.to_native();
    // An access waiting for a page-request answer completes (with TIMEOUT)
    // at the reset instead of after pri_timeout.
    g.post_event_buffers(2, 24 * 4);
    let t = g.endpoint_ticket(EP0, ep::OP_READ, 0, PASID, 0x6000_0000, 8, &[]);
    assert_eq!(g.events(1, Duration::from_secs(5)).len(), 1);
    let start = Instant::now();
    for i in 0..2 {
        g.fe.get_vring_base(i).unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "reset took {:?}",
        start.elapsed()
    );
    let r = g
        .wait_timeout(t, Duration::from_secs(1))
        .expect("completed at reset");
    assert_eq!(r.status, Some(Status::Timeout));
    g.restart_queues();
    assert_eq!(g.read(EP0, va, 8).status, Some(Status::NotReady));
    assert_eq!(
        stop_stream(&mut g, id, 1).status,
        Some(Status::OutOfRange),
        "streams gone"
    );
}

#[test]
fn many_concurrent_faulting_accesses_do_not_block_others() {
    let d = Daemon::start("pri_timeout_ms = 1000\n");
    let mut g = Guest::connect(&d);
    g.setup_iommu();
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

/// Any non-zero word in the page at `pa`.
fn page_written(g: &Guest, pa: u64) -> bool {
    (0..512).any(|i| g.read_u64(pa + 8 * i) != 0)
}

#[test]
fn stream_follow_goes_where_the_pasid_maps() {
    let d = Daemon::start("max_streams = 2\n");
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    let (va, va2) = (0x7000_0000u64, 0x9000_0000u64);
    let near = g.map_range(va, 3);
    let far = g.map_range(va2, 2);
    let follow = |va: u64, len: u64| w::StreamStart {
        mode: w::STREAM_MODE_FOLLOW,
        stride: 0.into(),
        ..stream(EP0, va, len, [0, 1, 0], ep::F_NO_PRI)
    };
    let run = |g: &mut Guest, s: w::StreamStart| {
        let r = g.request(req::STREAM_START, s.as_slice(), 8);
        ok(&r);
        let id = r.obj::<w::StreamStartResp>().stream_id.to_native();
        std::thread::sleep(Duration::from_millis(100));
        let r = stop_stream(g, id, 0);
        ok(&r);
        r.obj::<w::StreamCounts>()
    };
    // A window: only the leaves overlapping [va2, va2 + 8 KiB) are used.
    let c = run(&mut g, follow(va2, 0x2000));
    assert!(c.writes.to_native() > 0, "{c:?}");
    assert_eq!(c.faults.to_native(), 0, "{c:?}");
    assert!(far.iter().all(|&pa| page_written(&g, pa)));
    assert!(near.iter().all(|&pa| !page_written(&g, pa)));
    // len 0: everything mapped, and nothing else (no faults).
    let c = run(&mut g, follow(0, 0));
    assert_eq!(c.faults.to_native(), 0, "{c:?}");
    assert!(near.iter().all(|&pa| page_written(&g, pa)));
    // Other modes are refused; a range stream still needs a stride.
    let bad = w::StreamStart {
        mode: 2,
        ..follow(0, 0)
    };
    let r = g.request(req::STREAM_START, bad.as_slice(), 8);
    assert_eq!(r.status, Some(Status::BadRequest));
    let bad = w::StreamStart {
        mode: w::STREAM_MODE_RANGE,
        ..follow(va, 0x1000)
    };
    let r = g.request(req::STREAM_START, bad.as_slice(), 8);
    assert_eq!(r.status, Some(Status::BadRequest));
}
