//! The command processor: a batch of 128-bit commands executed strictly in
//! order, with the invalidations, COMPLETION_WAIT and COMPLETE_PPR_REQUEST.

use std::sync::atomic::Ordering;

use super::types::{inc, BatchResult, TraceEvent};
use super::Iommu;
use crate::cache::Tag;
use crate::command::{Command, CommandError};
use crate::event::Event;
use crate::fault::{apply_delay, FaultAction, FaultPoint};
use crate::mem;
use crate::srange::SRange;

impl Iommu {
    /// Execute a batch of commands strictly in order (§4.4). `cmds` carries
    /// each command's GPA (for ILLEGAL_COMMAND_ERROR) and its 16 bytes.
    pub fn execute(&self, cmds: &[(u64, [u8; 16])]) -> BatchResult {
        let _serial = self.cmd_lock.lock().unwrap();
        // Invalidations a planted bug held back take effect now, after the
        // COMPLETION_WAIT of their own batch has been reported.
        let late = std::mem::take(&mut *self.deferred.lock().unwrap());
        for (gpa, cmd) in late {
            self.invalidate(cmd, gpa, None);
        }
        let deferred = self.deferred_segments(cmds);
        let mut res = BatchResult::default();
        for (i, (gpa, raw)) in cmds.iter().enumerate() {
            let injected = apply_delay(self.faults.check(FaultPoint::Command, None, None));
            let decoded = match injected {
                Some(FaultAction::Fail) => Err(CommandError::Injected {
                    opcode: (u64::from_le_bytes(raw[..8].try_into().unwrap()) >> 60) as u8,
                }),
                _ => Command::decode(raw),
            };
            let cmd = match decoded {
                Ok(c) => c,
                Err(err) => {
                    inc(&self.stats.illegal_commands);
                    log::warn!("illegal command at {gpa:#x}: {err}");
                    self.trace(TraceEvent::IllegalCommand { gpa: *gpa, err });
                    self.log_event(Event::illegal_command(*gpa));
                    res.illegal = Some((i, *gpa, err));
                    return res;
                }
            };
            inc(&self.stats.commands);
            self.trace(TraceEvent::Command { gpa: *gpa, cmd });
            if injected != Some(FaultAction::Drop) {
                if let Err(err) = self.run(
                    cmd,
                    *gpa,
                    deferred.get(i).copied().unwrap_or(false),
                    &mut res,
                ) {
                    inc(&self.stats.illegal_commands);
                    res.illegal = Some((i, *gpa, err));
                    return res;
                }
            }
            res.executed = i + 1;
        }
        res
    }

    /// For each command, whether it sits ahead of a COMPLETION_WAIT that a
    /// `completion_wait: defer` rule makes report early: the IOMMU and ATC
    /// invalidations since the previous wait then take effect after it.
    /// Empty (nothing deferred) unless a rule watches COMPLETION_WAIT, so
    /// a batch is decoded a second time only under that planted bug.
    fn deferred_segments(&self, cmds: &[(u64, [u8; 16])]) -> Vec<bool> {
        if !self.faults.watches(FaultPoint::CompletionWait) {
            return Vec::new();
        }
        let mut out = vec![false; cmds.len()];
        let mut from = 0;
        for (i, (_, raw)) in cmds.iter().enumerate() {
            if let Ok(Command::CompletionWait { .. }) = Command::decode(raw) {
                let a = apply_delay(self.faults.check(FaultPoint::CompletionWait, None, None));
                if a == Some(FaultAction::Defer) {
                    out[from..i].iter_mut().for_each(|d| *d = true);
                }
                from = i + 1;
            }
        }
        out
    }

    fn run(
        &self,
        cmd: Command,
        gpa: u64,
        defer: bool,
        res: &mut BatchResult,
    ) -> Result<(), CommandError> {
        match cmd {
            Command::CompletionWait {
                store,
                interrupt,
                addr,
                data,
                ..
            } => {
                inc(&self.stats.completion_waits);
                // Every earlier command has completed: execution is synchronous.
                if store && mem::store_u64(&self.memory(), addr, data).is_err() {
                    let err = CommandError::StoreOutsideRam { addr };
                    log::warn!("{err}");
                    self.log_event(Event::command_hw_error(gpa));
                    return Err(err);
                }
                if interrupt {
                    res.comp_wait_int += 1;
                }
            }
            Command::InvalidateDevtabEntry { devid } => {
                if apply_delay(
                    self.faults
                        .check(FaultPoint::DteInvalidate, Some(devid), None),
                )
                .is_none()
                {
                    self.dte_cache.lock().unwrap().invalidate(devid);
                    self.gen.fetch_add(1, Ordering::AcqRel);
                }
            }
            Command::InvalidateIommuPages { pasid, .. } => {
                inc(&self.stats.iommu_invalidations);
                let a = apply_delay(self.faults.check(
                    FaultPoint::IotlbInvalidate,
                    None,
                    Some(pasid),
                ));
                self.plant(cmd, gpa, a, defer);
            }
            Command::InvalidateIotlbPages {
                devid, pasid, gn, ..
            } => {
                inc(&self.stats.atc_invalidations);
                if self.endpoint(devid).is_none() {
                    // Nobody answers the ATS invalidation.
                    self.log_event(Event::iotlb_inv_timeout(devid, gpa));
                    return Ok(());
                }
                let a = apply_delay(self.faults.check(
                    FaultPoint::AtcInvalidate,
                    Some(devid),
                    gn.then_some(pasid),
                ));
                self.plant(cmd, gpa, a, defer);
            }
            Command::InvalidateInterruptTable { .. } => {}
            Command::CompletePprRequest {
                devid, tag, code, ..
            } => {
                inc(&self.stats.prg_responses);
                self.trace(TraceEvent::PrgResponse {
                    devid,
                    prgi: tag,
                    code,
                });
                if let Some(ep) = self.endpoint(devid) {
                    if apply_delay(
                        self.faults
                            .check(FaultPoint::PriResponse, Some(devid), None),
                    )
                    .is_none()
                        && !ep.pri.respond(tag, code)
                    {
                        log::debug!("PRG response for {devid:#06x} with unexpected index {tag}");
                    }
                }
            }
            Command::InvalidateIommuAll => {
                inc(&self.stats.iommu_invalidations);
                let a = apply_delay(self.faults.check(FaultPoint::IotlbInvalidate, None, None));
                self.plant(cmd, gpa, a, defer);
            }
        }
        Ok(())
    }

    /// An IOMMU or ATC invalidation with what a fault rule made of it.
    fn plant(&self, cmd: Command, gpa: u64, action: Option<FaultAction>, defer: bool) {
        match action {
            _ if defer => self.deferred.lock().unwrap().push((gpa, cmd)),
            Some(FaultAction::Defer) => self.deferred.lock().unwrap().push((gpa, cmd)),
            Some(FaultAction::Drop) => {
                log::debug!("invalidation at {gpa:#x} dropped by a fault rule")
            }
            Some(FaultAction::Fail) => {
                if let Command::InvalidateIotlbPages { devid, .. } = cmd {
                    self.log_event(Event::iotlb_inv_timeout(devid, gpa));
                }
            }
            a => self.invalidate(cmd, gpa, a),
        }
    }

    /// Carry out an IOMMU or ATC invalidation; `Narrow` and `OtherPasid`
    /// plant the decoding bugs (docs/fault-injection.md).
    fn invalidate(&self, cmd: Command, gpa: u64, action: Option<FaultAction>) {
        let narrow = |r: SRange| {
            if action == Some(FaultAction::Narrow) {
                r.narrowed()
            } else {
                r
            }
        };
        let other = |p: u32| {
            if action == Some(FaultAction::OtherPasid) {
                p ^ 1
            } else {
                p
            }
        };
        match cmd {
            Command::InvalidateIommuPages {
                domain_id,
                pasid,
                gn,
                pde,
                range,
            } => {
                let (pasid, range) = (other(pasid), narrow(range));
                // GN=0 names host (GPA) translations; with Mode 0 there are none.
                let removed = if gn {
                    let tag = Tag { domain_id, pasid };
                    let keep_pwc = pde
                        && apply_delay(self.faults.check(
                            FaultPoint::PwcInvalidate,
                            None,
                            Some(pasid),
                        ))
                        .is_some();
                    let mut iotlb = self.iotlb.lock().unwrap();
                    let mut pwc = self.pwc.lock().unwrap();
                    self.gen.fetch_add(1, Ordering::AcqRel);
                    iotlb.invalidate(tag, &range)
                        + if pde && !keep_pwc {
                            pwc.invalidate(tag, &range)
                        } else {
                            0
                        }
                } else {
                    self.gen.fetch_add(1, Ordering::AcqRel);
                    0
                };
                self.trace(TraceEvent::IotlbInvalidate {
                    domain_id,
                    pasid,
                    range,
                    removed,
                });
            }
            Command::InvalidateIotlbPages {
                devid,
                pasid,
                gn,
                range,
                ..
            } => {
                let Some(ep) = self.endpoint(devid) else {
                    return;
                };
                let pasid = gn.then_some(other(pasid));
                let range = narrow(range);
                let removed = ep.gate.invalidate(pasid, &range);
                self.trace(TraceEvent::AtcInvalidate {
                    devid,
                    pasid,
                    range,
                    removed,
                });
            }
            Command::InvalidateIommuAll => {
                let mut iotlb = self.iotlb.lock().unwrap();
                let mut pwc = self.pwc.lock().unwrap();
                self.dte_cache.lock().unwrap().clear();
                self.gen.fetch_add(1, Ordering::AcqRel);
                iotlb.clear();
                pwc.clear();
            }
            _ => log::warn!("command at {gpa:#x} is not an invalidation"),
        }
    }
}
