//! The daemon's TOML configuration file: IOMMU and endpoint parameters,
//! limits, and fault-injection rules. Unknown keys are errors; every error
//! names the file, the key and the reason on one line.

use std::path::Path;
use std::time::Duration;

use iommu_dev::{FaultAction, FaultError, FaultPoint, FaultRule, IommuConfig};
use serde::Deserialize;

use crate::virtio_amdvi::MAX_ENDPOINTS;

/// A configuration problem: `file: key: reason`, or `file: reason` when no
/// key is to blame (the file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{reason}", key_prefix(.key))]
pub struct ConfigError {
    pub file: String,
    /// The key (`fault[2].devid`), empty when the problem is not a key's.
    pub key: String,
    pub reason: String,
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// The key a TOML error at byte `at` belongs to when `key_at` finds none
/// there: a missing field of a `[[fault]]` table (`fault[n].field`), or
/// the nearest `key =` line above (an unterminated value reported at the
/// end of the file).
fn key_near(text: &str, at: usize, msg: &str) -> Option<String> {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        let faults = text[..line_end]
            .lines()
            .filter(|l| l.trim() == "[[fault]]")
            .count();
        return Some(if faults > 0 {
            format!("fault[{}].{field}", faults - 1)
        } else {
            field.to_string()
        });
    }
    text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        if l.starts_with('[') {
            return Some(None);
        }
        let key = l.split_once('=')?.0.trim();
        (!key.is_empty() && !key.contains(' ')).then(|| Some(key.to_string()))
    })?
}

/// The file as written. Every key is optional; defaults are those of
/// `configs/default.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    endpoints: Option<Vec<u16>>,
    iotlb_entries: Option<u32>,
    pwc_entries: Option<u32>,
    dte_cache_entries: Option<u32>,
    atc_entries: Option<u32>,
    oracle: Option<bool>,
    oracle_records: Option<u32>,
    five_level: Option<bool>,
    pri_timeout_ms: Option<u32>,
    event_log_entries: Option<u32>,
    ppr_log_entries: Option<u32>,
    event_backlog: Option<u32>,
    max_streams: Option<u32>,
    ats_permission_miss: Option<String>,
    handshake_timeout_ms: Option<u32>,
    #[serde(default)]
    fault: Vec<FileFault>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFault {
    point: String,
    action: String,
    delay_us: Option<u64>,
    probability: Option<f64>,
    interval: Option<u64>,
    times: Option<i64>,
    skip: Option<u64>,
    devid: Option<u16>,
    pasid: Option<u32>,
}

/// The daemon's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub iommu: IommuConfig,
    pub max_streams: u32,
    pub faults: Vec<FaultRule>,
    /// How long a new connection has to send SET_OWNER, and any started
    /// message to arrive whole.
    pub handshake_timeout: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            iommu: IommuConfig::default(),
            max_streams: 16,
            faults: Vec::new(),
            handshake_timeout: Duration::from_millis(5000),
        }
    }
}

/// Line-local name of the key at byte offset `at` of `text`, with the table it sits in.
fn key_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = &text[line_start..line_end];
    let key = line.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('[') || key.contains(' ') {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_string());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

impl DaemonConfig {
    /// Read and validate a configuration file.
    pub fn from_file(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_toml(&file, &text)
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<DaemonConfig, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let fc: FileConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().lines().next().unwrap_or("").trim().to_string();
            let key = e
                .span()
                .and_then(|s| key_at(text, s.start).or_else(|| key_near(text, s.start, &msg)))
                .unwrap_or_default();
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let reason = match line {
                Some(l) => format!("{msg} (line {l})"),
                None => msg,
            };
            err(&key, reason)
        })?;
        let d = DaemonConfig::default();
        let mut i = d.iommu.clone();
        let pos = |key: &str, v: Option<u32>, dflt: usize, max: u32| match v {
            None => Ok(dflt),
            Some(0) => Err(err(key, "must be at least 1".into())),
            Some(v) if v > max => Err(err(key, format!("must be at most {max}"))),
            Some(v) => Ok(v as usize),
        };
        if let Some(eps) = fc.endpoints {
            if eps.is_empty() || eps.len() > MAX_ENDPOINTS {
                return Err(err(
                    "endpoints",
                    format!("needs 1 to {MAX_ENDPOINTS} device ids, got {}", eps.len()),
                ));
            }
            if let Some(dup) = eps
                .iter()
                .find(|e| eps.iter().filter(|x| x == e).count() > 1)
            {
                return Err(err("endpoints", format!("device id {dup:#06x} repeated")));
            }
            if eps.contains(&0xffff) {
                return Err(err("endpoints", "device id 0xffff is reserved".into()));
            }
            i.endpoints = eps;
        }
        i.iotlb_entries = pos("iotlb_entries", fc.iotlb_entries, i.iotlb_entries, 1 << 20)?;
        i.pwc_entries = pos("pwc_entries", fc.pwc_entries, i.pwc_entries, 1 << 20)?;
        i.dte_cache_entries = pos(
            "dte_cache_entries",
            fc.dte_cache_entries,
            i.dte_cache_entries,
            65536,
        )?;
        i.atc_entries = pos("atc_entries", fc.atc_entries, i.atc_entries, 1 << 20)?;
        i.oracle = fc.oracle.unwrap_or(i.oracle);
        i.oracle_records = pos(
            "oracle_records",
            fc.oracle_records,
            i.oracle_records,
            1 << 20,
        )?;
        i.five_level = fc.five_level.unwrap_or(i.five_level);
        i.pri_timeout = Duration::from_millis(pos(
            "pri_timeout_ms",
            fc.pri_timeout_ms,
            i.pri_timeout.as_millis() as usize,
            600_000,
        )? as u64);
        // `event_backlog` bounds both logs unless they are given one by one:
        // the model's bounded logs are the list entries wait in.
        let backlog = pos("event_backlog", fc.event_backlog, 512, 1 << 20)?;
        i.event_log_entries = pos("event_log_entries", fc.event_log_entries, backlog, 1 << 20)?;
        i.ppr_log_entries = pos("ppr_log_entries", fc.ppr_log_entries, backlog, 1 << 20)?;
        if let Some(m) = &fc.ats_permission_miss {
            i.ats_permission_miss = m.parse().map_err(|e| err("ats_permission_miss", e))?;
        }
        let max_streams = pos("max_streams", fc.max_streams, d.max_streams as usize, 256)? as u32;
        let handshake_timeout = Duration::from_millis(pos(
            "handshake_timeout_ms",
            fc.handshake_timeout_ms,
            d.handshake_timeout.as_millis() as usize,
            600_000,
        )? as u64);
        let mut faults = Vec::new();
        for (n, f) in fc.fault.iter().enumerate() {
            let k = |field: &str| format!("fault[{n}].{field}");
            let point: FaultPoint = f.point.parse().map_err(|e: String| err(&k("point"), e))?;
            let action = FaultAction::parse(&f.action, f.delay_us).map_err(|e| {
                let field = match e {
                    FaultError::UnknownAction(_) => "action",
                    _ => "delay_us",
                };
                err(&k(field), e.to_string())
            })?;
            let mut rule = FaultRule::new(point, action);
            if let Some(p) = f.probability {
                if !(0.0..=1.0).contains(&p) {
                    return Err(err(&k("probability"), "must be within 0.0..=1.0".into()));
                }
                rule.probability = p;
            }
            if let Some(iv) = f.interval {
                if iv == 0 {
                    return Err(err(&k("interval"), "must be at least 1".into()));
                }
                rule.interval = iv;
            }
            if let Some(t) = f.times {
                if t < -1 {
                    return Err(err(&k("times"), "must be -1 (unlimited) or more".into()));
                }
                rule.times = t;
            }
            rule.skip = f.skip.unwrap_or(0);
            if let Some(d) = f.devid {
                if !i.endpoints.contains(&d) {
                    let eps: Vec<String> =
                        i.endpoints.iter().map(|e| format!("{e:#06x}")).collect();
                    return Err(err(
                        &k("devid"),
                        format!(
                            "{d:#06x} is not an endpoint (endpoints: {})",
                            eps.join(", ")
                        ),
                    ));
                }
            }
            rule.devid = f.devid;
            if let Some(p) = f.pasid {
                if p >> 16 != 0 {
                    return Err(err(&k("pasid"), "must be below 65536".into()));
                }
                rule.pasid = Some(p);
            }
            rule.validate()
                .map_err(|e| err(&k("action"), e.to_string()))?;
            faults.push(rule);
        }
        Ok(DaemonConfig {
            iommu: i,
            max_streams,
            faults,
            handshake_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_dev::PermissionMiss;

    /// `configs/default.toml` states every default, and states it right.
    #[test]
    fn default_toml_is_the_default() {
        let text = include_str!("../../configs/default.toml");
        let c = DaemonConfig::from_toml("default.toml", text).unwrap();
        let d = DaemonConfig::default();
        assert_eq!(c.iommu, d.iommu);
        assert_eq!(c.max_streams, d.max_streams);
        assert_eq!(c.handshake_timeout, d.handshake_timeout);
        assert_eq!(c.faults, d.faults);
        let fc: FileConfig = toml::from_str(text).unwrap();
        let stated = [
            fc.endpoints.is_some(),
            fc.iotlb_entries.is_some(),
            fc.pwc_entries.is_some(),
            fc.dte_cache_entries.is_some(),
            fc.atc_entries.is_some(),
            fc.oracle.is_some(),
            fc.oracle_records.is_some(),
            fc.five_level.is_some(),
            fc.pri_timeout_ms.is_some(),
            fc.event_log_entries.is_some(),
            fc.ppr_log_entries.is_some(),
            fc.max_streams.is_some(),
            fc.ats_permission_miss.is_some(),
            fc.handshake_timeout_ms.is_some(),
        ];
        assert!(stated.iter().all(|&s| s), "{stated:?}");
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(
            DaemonConfig::from_toml("x", "").unwrap(),
            DaemonConfig::default()
        );
    }

    /// An override names only what it changes: a file with just a
    /// [[fault]] block is the default plus that rule.
    #[test]
    fn fault_only_file_merges_with_defaults() {
        let c = DaemonConfig::from_toml(
            "x",
            "[[fault]]\npoint = \"completion_wait\"\naction = \"defer\"\n",
        )
        .unwrap();
        assert_eq!(c.faults.len(), 1);
        assert_eq!(
            DaemonConfig {
                faults: Vec::new(),
                ..c
            },
            DaemonConfig::default()
        );
    }

    /// Every shipped config parses; the planted-bug ones are short overrides
    /// with a header comment.
    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let c = DaemonConfig::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&p).unwrap();
            if name.starts_with("broken-") || name.starts_with("stress-") {
                assert!(!c.faults.is_empty(), "{name}: no [[fault]] rule");
                assert!(text.starts_with('#'), "{name}: header comment first");
                assert!(
                    !text.contains("iotlb_entries ="),
                    "{name}: restates defaults"
                );
            }
            n += 1;
        }
        assert!(n >= 9, "{n} configs");
    }

    #[test]
    fn full_file() {
        let c = DaemonConfig::from_toml(
            "x",
            r#"
endpoints = [0x20, 0x21, 0x22]
atc_entries = 8
oracle = false
pri_timeout_ms = 100
event_backlog = 4
ppr_log_entries = 9
max_streams = 2
[[fault]]
point = "atc_invalidate"
action = "delay"
delay_us = 500
devid = 0x21
times = 3
"#,
        )
        .unwrap();
        assert_eq!(c.iommu.endpoints, vec![0x20, 0x21, 0x22]);
        assert_eq!(c.iommu.atc_entries, 8);
        assert!(!c.iommu.oracle);
        assert_eq!(c.iommu.pri_timeout, Duration::from_millis(100));
        assert_eq!(c.iommu.event_log_entries, 4);
        assert_eq!(c.iommu.ppr_log_entries, 9);
        assert_eq!(c.max_streams, 2);
        assert_eq!(c.faults.len(), 1);
        assert_eq!(
            c.faults[0].action,
            FaultAction::Delay(Duration::from_micros(500))
        );
        assert_eq!(c.faults[0].devid, Some(0x21));
        assert_eq!(c.faults[0].times, 3);
    }

    fn bad(text: &str) -> ConfigError {
        DaemonConfig::from_toml("f.toml", text).unwrap_err()
    }

    #[test]
    fn errors_name_key_and_reason() {
        let e = bad("atc_entriez = 3\n");
        assert_eq!(e.key, "atc_entriez");
        assert!(e.reason.contains("unknown field"), "{e}");
        let e = bad("oracle = true\natc_entries = \"many\"\n");
        assert_eq!(e.key, "atc_entries");
        assert!(e.reason.contains("line 2"), "{e}");
        assert_eq!(bad("atc_entries = 0").key, "atc_entries");
        assert_eq!(bad("endpoints = []").key, "endpoints");
        assert_eq!(bad("endpoints = [1, 1]").key, "endpoints");
        assert_eq!(bad("endpoints = [70000]").key, "endpoints");
        let e = bad("[[fault]]\npoint = \"nowhere\"\naction = \"drop\"\n");
        assert_eq!(e.key, "fault[0].point");
        assert!(e.reason.contains("atc_invalidate"));
        assert_eq!(
            bad("[[fault]]\npoint = \"walk_read\"\naction = \"delay\"\n").key,
            "fault[0].delay_us"
        );
        assert_eq!(
            bad("[[fault]]\npoint = \"walk_read\"\naction = \"explode\"\n").key,
            "fault[0].action"
        );
        assert_eq!(
            bad("[[fault]]\npoint = \"walk_read\"\naction = \"drop\"\nprobability = 2.0\n").key,
            "fault[0].probability"
        );
        let e = bad("[[fault]]\npoint = \"walk_read\"\naction = \"drop\"\ncolour = 1\n");
        assert_eq!(e.key, "fault.colour");
        assert_eq!(
            bad("ats_permission_miss = \"maybe\"").key,
            "ats_permission_miss"
        );
        assert_eq!(
            DaemonConfig::from_toml("x", "ats_permission_miss = \"cached\"")
                .unwrap()
                .iommu
                .ats_permission_miss,
            PermissionMiss::Cached
        );
        let e = bad("[[fault]]\npoint = \"walk_read\"\naction = \"narrow\"\n");
        assert_eq!(e.key, "fault[0].action");
        assert!(e.reason.contains("walk_read"), "{e}");
        for e in [bad("x = "), bad("[[fault]]\npoint = 3\naction = \"drop\"")] {
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }
}
