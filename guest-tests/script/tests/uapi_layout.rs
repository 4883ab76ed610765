//! `src/uapi.rs` against `guest-tests/include/amdvi_uapi.h`, as the C
//! compiler reads the header: every field of every struct the Rust side
//! mirrors, the constants it copies and the ioctl numbers.

#[macro_use]
#[path = "../../include/layout_probe.rs"]
mod layout_probe;
#[path = "../src/uapi.rs"]
mod uapi;

use layout_probe::{int, string};
use uapi::*;

#[test]
fn uapi_matches_amdvi_uapi_h() {
    let mut checks = Vec::new();
    checks.extend(fields!(
        "struct amdvi_ioc_info",
        Info,
        efr,
        num_endpoints,
        dev_flags,
        iotlb_entries,
        pwc_entries,
        dte_cache_entries,
        atc_entries,
        max_streams,
        pri_timeout_ms,
        endpoint_devid,
        max_pasid,
        guest_levels,
        features,
        notifier_mode,
        epoch_gpa,
        fault_rules,
    ));
    checks.extend(fields!(
        "struct amdvi_ioc_access",
        Access,
        endpoint,
        pasid,
        va,
        buf,
        len,
        op,
        flags,
        reserved,
        status,
        page_requests,
        ats,
    ));
    checks.extend(fields!(
        "struct amdvi_ioc_finding",
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
    checks.extend(fields!(
        "struct amdvi_ioc_oracle",
        Oracle,
        pasid,
        flags,
        va,
        len,
        records,
        max_records,
        nrecords,
        status,
        reserved,
        count,
    ));
    checks.extend(fields!(
        "struct amdvi_ioc_pt_create",
        PtCreate,
        pasid,
        endpoint_mask,
        levels,
        reserved,
        root_pa,
    ));
    checks.extend(fields!(
        "struct amdvi_ioc_pt_page",
        PtPage,
        op,
        index,
        offset,
        len,
        buf,
        pa,
    ));
    checks.extend(fields!(
        "struct amdvi_ioc_pt_pte",
        PtPte,
        op,
        reserved,
        va,
        value,
        old,
    ));
    checks.extend(fields!(
        "struct amdvi_ioc_pt_inv",
        PtInv,
        flags,
        pasid,
        endpoint_mask,
        s,
        addr,
    ));
    checks.extend(fields!(
        "struct amdvi_ioc_bind_pid",
        BindPid,
        pidfd,
        endpoint_mask,
        flags,
        pasid,
    ));
    checks.extend([
        string("\"/dev/\" AMDVI_DEV_NAME", DEV_PATH),
        int("AMDVI_UAPI_MAX_EP", MAX_EP as u64),
        int("AMDVI_OP_TRANSLATE", OP_TRANSLATE.into()),
        int("AMDVI_OP_READ", OP_READ.into()),
        int("AMDVI_OP_WRITE", OP_WRITE.into()),
        int("AMDVI_ACC_NO_PRI", ACC_NO_PRI.into()),
        int("AMDVI_ORACLE_CLEAR", ORACLE_CLEAR.into()),
        int("AMDVI_ORACLE_RECORDS", ORACLE_RECORDS.into()),
        int("AMDVI_PT_PAGE_ALLOC", PT_PAGE_ALLOC.into()),
        int("AMDVI_PT_PAGE_READ", PT_PAGE_READ.into()),
        int("AMDVI_PT_PAGE_WRITE", PT_PAGE_WRITE.into()),
        int("AMDVI_PT_PTE_GET", PT_PTE_GET.into()),
        int("AMDVI_PT_PTE_SET", PT_PTE_SET.into()),
        int("AMDVI_INV_IOMMU", INV_IOMMU.into()),
        int("AMDVI_INV_IOTLB", INV_IOTLB.into()),
        int("AMDVI_INV_WAIT", INV_WAIT.into()),
        // The device status codes come from the protocol header.
        int("AMDVI_S_OK", S_OK.into()),
        int("AMDVI_S_TRANSLATION_FAULT", S_TRANSLATION_FAULT.into()),
        int("AMDVI_IOC_INFO", IOC_INFO),
        int("AMDVI_IOC_ACCESS", IOC_ACCESS),
        int("AMDVI_IOC_ORACLE_READ", IOC_ORACLE_READ),
        int("AMDVI_IOC_ORACLE_AUDIT", IOC_ORACLE_AUDIT),
        int("AMDVI_IOC_PT_CREATE", IOC_PT_CREATE),
        int("AMDVI_IOC_PT_PAGE", IOC_PT_PAGE),
        int("AMDVI_IOC_PT_PTE", IOC_PT_PTE),
        int("AMDVI_IOC_PT_INV", IOC_PT_INV),
        int("AMDVI_IOC_BIND_PID", IOC_BIND_PID),
        int("AMDVI_STREAM_FOLLOW", STREAM_FOLLOW.into()),
    ]);
    layout_probe::run(
        "uapi_probe",
        &["amdvi_uapi.h", "amdvi_proto.h"],
        &checks,
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
    );
}
