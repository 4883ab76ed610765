//! `src/virtio_amdvi.rs` against `guest-tests/include/amdvi_proto.h`, as the
//! C compiler reads the header: every field of every wire struct, the
//! protocol constants, the status codes and the order of the STATS counters.

#[macro_use]
#[path = "../../guest-tests/include/layout_probe.rs"]
mod layout_probe;

use layout_probe::int;
use vhost_device_amdvi::amdvi::Device;
use vhost_device_amdvi::virtio_amdvi::*;
use vhost_device_amdvi::DaemonConfig;
use vm_memory::GuestMemoryAtomic;

#[test]
fn wire_structs_match_amdvi_proto_h() {
    let mut checks = Vec::new();
    checks.extend(fields!("struct amdvi_req_hdr", ReqHdr, type_ => "type", reserved));
    checks.extend(fields!("struct amdvi_resp_hdr", RespHdr, status, reserved));
    checks.extend(fields!(
        "struct amdvi_info",
        Info,
        efr,
        num_endpoints,
        flags,
        iotlb_entries,
        pwc_entries,
        dte_cache_entries,
        atc_entries,
        max_streams,
        pri_timeout_ms,
        endpoint_devid,
        fault_rules,
    ));
    checks.extend(fields!(
        "struct amdvi_set_devtab",
        SetDevtab,
        dev_table_base,
        control,
    ));
    checks.extend(fields!(
        "struct amdvi_commands",
        CommandsHdr,
        count,
        reserved
    ));
    checks.extend(fields!(
        "struct amdvi_commands_resp",
        CommandsResp,
        executed,
        comp_wait_int,
        illegal_gpa,
    ));
    checks.extend(fields!(
        "struct amdvi_endpoint",
        Endpoint,
        devid,
        op,
        flags,
        pasid,
        va,
        len,
        reserved,
    ));
    checks.extend(fields!(
        "struct amdvi_endpoint_resp",
        EndpointResp,
        ats,
        page_requests,
        reserved,
    ));
    checks.extend(fields!(
        "struct amdvi_stream_start",
        StreamStart,
        devid,
        flags,
        mode,
        pasid,
        va,
        len,
        stride,
        read_weight,
        write_weight,
        translate_weight,
        reserved2,
        rate,
        duration_ms,
        write_value,
    ));
    checks.extend(fields!(
        "struct amdvi_stream_start_resp",
        StreamStartResp,
        stream_id,
        reserved,
    ));
    checks.extend(fields!(
        "struct amdvi_stream_stop",
        StreamStop,
        stream_id,
        flags
    ));
    checks.extend(fields!(
        "struct amdvi_stream_counts",
        StreamCounts,
        reads,
        writes,
        translations,
        faults,
        page_requests,
        atc_hits,
        atc_misses,
        errors,
        elapsed_us,
        running,
        reserved,
    ));
    checks.extend(fields!(
        "struct amdvi_oracle_read",
        OracleRead,
        max_records,
        flags,
    ));
    checks.extend(fields!(
        "struct amdvi_oracle_audit",
        OracleAudit,
        pasid,
        max_records,
        va,
        len,
    ));
    checks.extend(fields!(
        "struct amdvi_oracle_resp",
        OracleResp,
        count,
        nrecords,
        reserved,
    ));
    checks.extend(fields!(
        "struct amdvi_finding",
        Finding,
        rule,
        devid,
        source,
        pasid,
        write,
        va,
        cached_pa,
        current_pte,
        seq,
        epoch,
        reserved,
    ));
    checks.extend(fields!("struct amdvi_oracle_epoch", OracleEpoch, gpa));
    checks.extend(fields!("struct amdvi_stats", StatsHdr, count, reserved));
    checks.extend(fields!(
        "struct amdvi_event_rec",
        EventRec,
        kind,
        reserved,
        dropped,
        entry,
    ));

    checks.extend(
        Status::ALL
            .into_iter()
            .map(|st| int(&format!("AMDVI_S_{}", st.name().to_uppercase()), st as u64)),
    );
    checks.extend([
        int("AMDVI_CFG_MAGIC", CONFIG_MAGIC.into()),
        int("AMDVI_CFG_VERSION", CONFIG_VERSION.into()),
        int("AMDVI_VQ_REQUEST", REQUEST_QUEUE.into()),
        int("AMDVI_VQ_EVENT", EVENT_QUEUE.into()),
        int("AMDVI_NUM_VQS", NUM_QUEUES as u64),
        int("AMDVI_REQ_INFO", req::INFO.into()),
        int("AMDVI_REQ_SET_DEVTAB", req::SET_DEVTAB.into()),
        int("AMDVI_REQ_COMMANDS", req::COMMANDS.into()),
        int("AMDVI_REQ_ENDPOINT", req::ENDPOINT.into()),
        int("AMDVI_REQ_STREAM_START", req::STREAM_START.into()),
        int("AMDVI_REQ_STREAM_STOP", req::STREAM_STOP.into()),
        int("AMDVI_REQ_ORACLE_READ", req::ORACLE_READ.into()),
        int("AMDVI_REQ_ORACLE_AUDIT", req::ORACLE_AUDIT.into()),
        int("AMDVI_REQ_ORACLE_EPOCH", req::ORACLE_EPOCH.into()),
        int("AMDVI_REQ_STATS", req::STATS.into()),
        int("AMDVI_EP_TRANSLATE", ep::OP_TRANSLATE.into()),
        int("AMDVI_EP_READ", ep::OP_READ.into()),
        int("AMDVI_EP_WRITE", ep::OP_WRITE.into()),
        int("AMDVI_EP_F_PRIV", ep::F_PRIV.into()),
        int("AMDVI_EP_F_EXEC", ep::F_EXEC.into()),
        int("AMDVI_EP_F_NO_WRITE", ep::F_NO_WRITE.into()),
        int("AMDVI_EP_F_NO_PRI", ep::F_NO_PRI.into()),
        int("AMDVI_EP_F_MASK", ep::F_MASK.into()),
        int("AMDVI_STREAM_MODE_RANGE", STREAM_MODE_RANGE.into()),
        int("AMDVI_STREAM_MODE_FOLLOW", STREAM_MODE_FOLLOW.into()),
        int("AMDVI_EP_MAX_LEN", ep::MAX_LEN.into()),
        int("AMDVI_MAX_COMMANDS", MAX_COMMANDS.into()),
        int("AMDVI_MAX_ENDPOINTS", MAX_ENDPOINTS as u64),
        int("AMDVI_FAULT_RULES_LEN", FAULT_RULES_LEN as u64),
        int("AMDVI_ORACLE_MAX_RECORDS", ORACLE_MAX_RECORDS.into()),
        int("AMDVI_ORACLE_READ_F_CLEAR", ORACLE_READ_F_CLEAR.into()),
        int("AMDVI_STREAM_STOP_F_REPORT", STREAM_STOP_F_REPORT.into()),
        int("AMDVI_INFO_F_ORACLE", INFO_F_ORACLE.into()),
        int("AMDVI_INFO_F_GUEST_5LEVEL", INFO_F_FIVE_LEVEL.into()),
        int("AMDVI_EVREC_EVENT", EVREC_EVENT.into()),
        int("AMDVI_EVREC_PPR", EVREC_PPR.into()),
        int("AMDVI_DC_REQUESTS", STAT_REQUESTS as u64),
        int("AMDVI_DC_BAD_CHAINS", STAT_BAD_CHAINS as u64),
    ]);

    // STATS: the daemon's counters, by name, in the header's enum order.
    let dev = Device::new(
        &DaemonConfig::default(),
        GuestMemoryAtomic::new(iommu_dev::mem::anon(0x10_0000)),
    );
    let names: Vec<&str> = dev.counters().into_iter().map(|(n, _)| n).collect();
    for (i, n) in names.iter().enumerate() {
        checks.push(int(&format!("AMDVI_DC_{}", n.to_uppercase()), i as u64));
    }
    checks.push(int("AMDVI_DC_NR_KNOWN", names.len() as u64));

    layout_probe::run(
        "proto_probe",
        &["amdvi_proto.h"],
        &checks,
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
    );
}
