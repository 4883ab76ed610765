//! COMMANDS requests: illegal and reserved commands with their event,
//! malformed batches, bodies split across descriptors, and COMPLETION_WAIT
//! stores that land only after the invalidations before them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use iommu_dev::Command;
use vhost_device_amdvi::virtio_amdvi::{self as w, req, Status};

#[test]
fn commands_illegal_reserved_and_event() {
    let (_d, mut g) = ready(CFG);
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
    let (_d, mut g) = ready(CFG);
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
fn completion_wait_store_visible_when_response_arrives() {
    let (_d, mut g) = ready(CFG);
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
    let (_d, mut g) =
        ready("[[fault]]\npoint = \"atc_invalidate\"\naction = \"delay\"\ndelay_us = 300000\n");
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
