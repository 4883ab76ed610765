//! Tests of the executor: its errors, on the model and on a failing backend.

use iommu_dev::{AccessError, AtsCompletion, Command, Finding};

use super::{Exec, ExecError};
use crate::machine::{Backend, BackendError, DmaResult, Model, Program, CPU, IOMMU};
use crate::script::parse;

/// The model, except that every command fails the way a real device's
/// ioctl would.
#[derive(Debug)]
struct FailingCommands(Model);

impl Backend for FailingCommands {
    fn reset(&mut self) -> Result<(), BackendError> {
        self.0.reset()
    }
    fn pte(&mut self, va: u64) -> u64 {
        self.0.pte(va)
    }
    fn set_pte(&mut self, va: u64, pte: u64) {
        self.0.set_pte(va, pte)
    }
    fn page_pa(&self, page: usize) -> u64 {
        self.0.page_pa(page)
    }
    fn page_of(&self, pa: u64) -> Option<usize> {
        self.0.page_of(pa)
    }
    fn load(&mut self, pa: u64) -> u64 {
        self.0.load(pa)
    }
    fn store(&mut self, pa: u64, v: u64) {
        self.0.store(pa, v)
    }
    fn fill(&mut self, page: usize, v: u64) {
        self.0.fill(page, v)
    }
    fn copy(&mut self, from: usize, to: usize) {
        self.0.copy(from, to)
    }
    fn identical(&mut self, a: usize, b: usize) -> bool {
        self.0.identical(a, b)
    }
    fn execute(&mut self, _: &Command) -> Result<Option<usize>, BackendError> {
        Err(BackendError::Device(
            "PT_INV: Operation not permitted".into(),
        ))
    }
    fn translate(&mut self, dev: usize, va: u64) -> Result<AtsCompletion, AccessError> {
        self.0.translate(dev, va)
    }
    fn access(&mut self, dev: usize, va: u64, write: Option<u64>) -> DmaResult {
        self.0.access(dev, va, write)
    }
    fn oracle(&mut self) -> Vec<Finding> {
        self.0.oracle()
    }
    fn audit(&mut self, pasid: u32) -> Result<Vec<Finding>, BackendError> {
        self.0.audit(pasid)
    }
}

#[test]
fn a_cpu_access_to_an_unmapped_va_fails_the_execution() {
    for (line, write) in [("cpu write A 1", true), ("cpu read A", false)] {
        let s = parse("t.amdvi", line).unwrap();
        let prog = Program::new(&s, &[]);
        let e = Exec::replay(&s, &prog, &[CPU]);
        let want = ExecError::Unmapped {
            write,
            va: "A".into(),
        };
        assert_eq!(e.error.as_ref(), Some(&want));
        let msg = if write {
            "cpu write to unmapped A"
        } else {
            "cpu read of unmapped A"
        };
        assert_eq!(want.to_string(), msg);
    }
}

#[test]
fn a_backend_error_names_the_command() {
    let s = parse("t.amdvi", "map A -> P ro\ncpu clear A\ncpu inv iommu A\n").unwrap();
    let prog = Program::new(&s, &[]);
    let model = Model::new(&s, &prog.faults);
    let mut e = Exec::with_backend(&s, &prog, FailingCommands(model));
    e.step(CPU); // clear
    e.step(CPU); // post
    e.step(IOMMU);
    let Some(ExecError::Command { cmd, error }) = &e.error else {
        panic!("{:?}", e.error)
    };
    assert_eq!(cmd, "INVALIDATE_IOMMU_PAGES pasid 1 A");
    assert_eq!(
        *error,
        BackendError::Device("PT_INV: Operation not permitted".into())
    );
    let text = &e.log.last().unwrap().text;
    assert!(
        text.ends_with("ERROR PT_INV: Operation not permitted"),
        "{text}"
    );
    assert_eq!(
        e.error.unwrap().to_string(),
        "INVALIDATE_IOMMU_PAGES pasid 1 A: PT_INV: Operation not permitted"
    );
}

#[test]
fn the_models_errors_are_typed() {
    let s = parse("t.amdvi", "cpu clear A\n").unwrap();
    let mut m = Model::new(&s, &[]);
    let e = m.audit(1 << 20).unwrap_err();
    assert_eq!(e, BackendError::Access(AccessError::PasidRange(1 << 20)));
    assert_eq!(
        ExecError::Audit(e.clone()).to_string(),
        format!("audit: {e}")
    );
    assert!(m.reset().is_ok());
}
