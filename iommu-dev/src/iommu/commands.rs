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

impl Iommu {
    /// Execute a batch of commands strictly in order (§4.4). `cmds` carries
    /// each command's GPA (for ILLEGAL_COMMAND_ERROR) and its 16 bytes.
    pub fn execute(&self, cmds: &[(u64, [u8; 16])]) -> BatchResult {
        let _serial = self.cmd_lock.lock().unwrap();
        let mut res = BatchResult::default();
        for (i, (gpa, raw)) in cmds.iter().enumerate() {
            let injected = apply_delay(self.faults.check(FaultPoint::Command, None, None));
            let decoded = match injected {
                Some(FaultAction::Fail) => Err(CommandError::Opcode(
                    (u64::from_le_bytes(raw[..8].try_into().unwrap()) >> 60) as u8,
                )),
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
                if let Err(err) = self.run(cmd, *gpa, &mut res) {
                    inc(&self.stats.illegal_commands);
                    res.illegal = Some((i, *gpa, err));
                    return res;
                }
            }
            res.executed = i + 1;
        }
        res
    }

    fn run(&self, cmd: Command, gpa: u64, res: &mut BatchResult) -> Result<(), CommandError> {
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
                    log::warn!("COMPLETION_WAIT store address {addr:#x} is outside guest RAM");
                    self.log_event(Event::command_hw_error(gpa));
                    return Err(CommandError::Reserved { lo: addr, hi: 0 });
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
            Command::InvalidateIommuPages {
                domain_id,
                pasid,
                gn,
                pde,
                range,
            } => {
                inc(&self.stats.iommu_invalidations);
                if apply_delay(
                    self.faults
                        .check(FaultPoint::IotlbInvalidate, None, Some(pasid)),
                )
                .is_none()
                {
                    // GN=0 names host (GPA) translations; with Mode 0 there are none.
                    let removed = if gn {
                        let tag = Tag { domain_id, pasid };
                        let mut iotlb = self.iotlb.lock().unwrap();
                        let mut pwc = self.pwc.lock().unwrap();
                        self.gen.fetch_add(1, Ordering::AcqRel);
                        iotlb.invalidate(tag, &range)
                            + if pde { pwc.invalidate(tag, &range) } else { 0 }
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
            }
            Command::InvalidateIotlbPages {
                devid,
                pasid,
                gn,
                range,
                ..
            } => {
                inc(&self.stats.atc_invalidations);
                let Some(ep) = self.endpoint(devid) else {
                    // Nobody answers the ATS invalidation.
                    self.log_event(Event::iotlb_inv_timeout(devid, gpa));
                    return Ok(());
                };
                let pasid = gn.then_some(pasid);
                match apply_delay(
                    self.faults
                        .check(FaultPoint::AtcInvalidate, Some(devid), pasid),
                ) {
                    Some(FaultAction::Drop) => {
                        log::debug!("ATC invalidation for {devid:#06x} dropped by a fault rule")
                    }
                    Some(_) => self.log_event(Event::iotlb_inv_timeout(devid, gpa)),
                    None => {
                        let removed = ep.gate.invalidate(pasid, &range);
                        self.trace(TraceEvent::AtcInvalidate {
                            devid,
                            pasid,
                            range,
                            removed,
                        });
                    }
                }
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
                    if self
                        .faults
                        .check(FaultPoint::PriResponse, Some(devid), None)
                        .is_none()
                        && !ep.pri.respond(tag, code)
                    {
                        log::debug!("PRG response for {devid:#06x} with unexpected index {tag}");
                    }
                }
            }
            Command::InvalidateIommuAll => {
                inc(&self.stats.iommu_invalidations);
                if apply_delay(self.faults.check(FaultPoint::IotlbInvalidate, None, None)).is_none()
                {
                    let mut iotlb = self.iotlb.lock().unwrap();
                    let mut pwc = self.pwc.lock().unwrap();
                    self.dte_cache.lock().unwrap().clear();
                    self.gen.fetch_add(1, Ordering::AcqRel);
                    iotlb.clear();
                    pwc.clear();
                }
            }
        }
        Ok(())
    }
}
