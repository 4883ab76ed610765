//! The virtqueues themselves: malformed request chains answered or
//! counted, indirect descriptors, and the event queue holding a bounded
//! number of records while the guest posts no buffers.

mod common;

use std::time::Duration;

use common::*;
use vhost_device_amdvi::virtio_amdvi::{self as w, req, Status};
use vm_memory::{Bytes, GuestAddress};

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
fn event_queue_without_buffers_holds_bounded_and_counts_drops() {
    let (_d, mut g) = ready("event_log_entries = 4\n");
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
