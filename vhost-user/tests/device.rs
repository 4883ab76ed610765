//! The device's life as a frontend sees it: config space, features and
//! INFO, requests before SET_DEVTAB, SET_DEVTAB's checks, a second
//! frontend after a disconnect, and a guest device reset.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vhost::VhostBackend;
use vhost_device_amdvi::virtio_amdvi::{self as w, ep, req, Status};
use vm_memory::ByteValued;

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
    let (_d, mut g) = ready("pri_timeout_ms = 5000\n");
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
