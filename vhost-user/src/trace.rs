//! `--trace FILE`: the model's trace events as JSON lines.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use iommu_dev::{TraceEvent, Tracer};
use serde_json::json;

/// Writes one JSON object per line: `{"t_us": .., "ev": "..", ...}`.
#[derive(Debug)]
pub struct JsonTracer {
    out: Mutex<BufWriter<File>>,
    start: Instant,
}

impl JsonTracer {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(JsonTracer {
            out: Mutex::new(BufWriter::new(File::create(path)?)),
            start: Instant::now(),
        })
    }

    pub fn flush(&self) {
        let _ = self.out.lock().unwrap().flush();
    }
}

fn hex16(e: &[u8; 16]) -> String {
    e.iter().map(|b| format!("{b:02x}")).collect()
}

/// The JSON form of one trace event.
pub fn to_json(ev: &TraceEvent) -> serde_json::Value {
    match ev {
        TraceEvent::Command { gpa, cmd } => {
            json!({"ev": "command", "gpa": gpa, "cmd": format!("{cmd:?}")})
        }
        TraceEvent::IllegalCommand { gpa, err } => {
            json!({"ev": "illegal_command", "gpa": gpa, "err": err.to_string()})
        }
        TraceEvent::Walk {
            devid,
            pasid,
            va,
            result,
        } => match result {
            Ok((pa, size_log2)) => json!({"ev": "walk", "devid": devid, "pasid": pasid,
                "va": va, "pa": pa, "size_log2": size_log2}),
            Err(f) => json!({"ev": "walk", "devid": devid, "pasid": pasid, "va": va,
                "fault": format!("{f:?}")}),
        },
        TraceEvent::AtsRequest {
            devid,
            pasid,
            va,
            completion,
        } => json!({"ev": "ats_request", "devid": devid, "pasid": pasid, "va": va,
            "completion": completion.encode()}),
        TraceEvent::IotlbInvalidate {
            domain_id,
            pasid,
            range,
            removed,
        } => json!({"ev": "iotlb_invalidate", "domain_id": domain_id, "pasid": pasid,
            "base": range.base, "size_log2": range.size_log2(), "removed": removed}),
        TraceEvent::AtcInvalidate {
            devid,
            pasid,
            range,
            removed,
        } => json!({"ev": "atc_invalidate", "devid": devid, "pasid": pasid,
            "base": range.base, "size_log2": range.size_log2(), "removed": removed}),
        TraceEvent::Event { entry } => json!({"ev": "event", "entry": hex16(entry)}),
        TraceEvent::PageRequest {
            devid,
            pasid,
            va,
            prgi,
            write,
        } => json!({"ev": "page_request", "devid": devid, "pasid": pasid, "va": va,
            "prgi": prgi, "write": write}),
        TraceEvent::PrgResponse { devid, prgi, code } => {
            json!({"ev": "prg_response", "devid": devid, "prgi": prgi, "code": code})
        }
        TraceEvent::Finding(f) => json!({"ev": "finding", "rule": f.rule.name(),
            "devid": f.devid, "source": f.source as u16, "pasid": f.pasid, "write": f.write,
            "va": f.va, "cached_pa": f.cached_pa, "current_pte": f.current_pte,
            "seq": f.seq, "epoch": f.epoch}),
    }
}

impl Tracer for JsonTracer {
    fn trace(&self, ev: &TraceEvent) {
        let mut v = to_json(ev);
        v["t_us"] = json!(self.start.elapsed().as_micros() as u64);
        let mut out = self.out.lock().unwrap();
        let _ = serde_json::to_writer(&mut *out, &v);
        let _ = out.write_all(b"\n");
    }
}
