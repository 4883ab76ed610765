//! Exhaustive exploration of the interleavings of a script's actors, and the
//! literal run.
//!
//! Every interleaving is replayed from the initial state on the model (the
//! state is a few hundred KiB; a branch replays its prefix). Reduction
//! (sound, partial-order, sleep sets): two steps of different actors whose
//! footprints (what they read and write: page-table entries, A/D bits,
//! IOTLB, each ATC, the command queue, each data page, each VA word) do not
//! conflict give the same outcome in either order, so of two interleavings
//! that differ only in the order of such steps one is explored. Every
//! class of equivalent interleavings keeps a fully explored member, and
//! every finding is a property of the class, so verdicts, counts per class
//! member and redundancy are unchanged. Loops are bounded by the script and
//! a miss retries at most `retries` times, so the tree is finite.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use iommu_dev::FaultRule;

use crate::machine::{Backend, Exec, ExecError, Fp, Model, Program, Rec, CPU, IOMMU};
use crate::script::{Kind, Script};

/// A counterexample: the steps that matter, in execution order.
#[derive(Debug, Clone)]
pub struct Trace {
    pub recs: Vec<Rec>,
    /// Index (in `recs`) of the step with the finding.
    pub at: usize,
    pub kind: Kind,
    pub detail: String,
    /// Steps in the full interleaving it was cut from.
    pub full_len: usize,
}

/// What the exploration found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub executions: u64,
    pub steps: u64,
    pub elapsed: Duration,
    /// Stopped at the execution bound before finishing.
    pub truncated: bool,
    /// Executions with each finding.
    pub counts: BTreeMap<Kind, u64>,
    /// Shortest trace per finding.
    pub shortest: BTreeMap<Kind, Trace>,
    /// Per invalidation (inv#N, 0-based): executions it ran in, entries removed in total.
    pub inv_runs: Vec<u64>,
    pub inv_removed: Vec<u64>,
    /// The error of the first execution that had one.
    pub error: Option<ExecError>,
    /// Paths cut because every remaining choice was asleep (equivalent to
    /// an explored interleaving).
    pub blocked: u64,
}

impl Outcome {
    /// Findings that fail the script and occurred.
    pub fn failing(&self, s: &Script) -> Vec<Kind> {
        let f = s.failing();
        self.counts
            .keys()
            .filter(|k| f.contains(k))
            .copied()
            .collect()
    }

    /// The shortest failing trace.
    pub fn counterexample(&self, s: &Script) -> Option<&Trace> {
        self.failing(s)
            .iter()
            .filter_map(|k| self.shortest.get(k))
            .min_by_key(|t| t.recs.len())
    }

    /// `inv#N` (1-based) that removed nothing in every execution.
    pub fn redundant(&self) -> Vec<usize> {
        (0..self.inv_runs.len())
            .filter(|&i| self.inv_runs[i] > 0 && self.inv_removed[i] == 0)
            .map(|i| i + 1)
            .collect()
    }
}

/// The steps of `recs[..=at]` that `recs[at]` depends on (its causal past):
/// the same actor, or conflicting footprints, transitively.
pub fn cone(recs: &[Rec], at: usize) -> Vec<usize> {
    let mut keep = vec![false; at + 1];
    keep[at] = true;
    for j in (0..at).rev() {
        let r = &recs[j];
        keep[j] = (j + 1..=at)
            .any(|i| keep[i] && (recs[i].actor == r.actor || recs[i].fp.conflicts(&r.fp)));
    }
    (0..=at).filter(|&i| keep[i]).collect()
}

struct Dfs {
    max: u64,
    reduce: bool,
    out: Outcome,
}

impl Dfs {
    fn leaf(&mut self, e: &mut Exec<'_>) {
        e.finish();
        let o = &mut self.out;
        o.executions += 1;
        o.steps += e.log.len() as u64;
        if o.error.is_none() {
            o.error = e.error.clone();
        }
        for (i, n) in e.inv_removed.iter().enumerate() {
            o.inv_runs[i] += 1;
            o.inv_removed[i] += *n as u64;
        }
        let mut seen = BTreeSet::new();
        for (at, r) in e.log.iter().enumerate() {
            for f in &r.findings {
                if !seen.insert(f.kind) {
                    continue;
                }
                *o.counts.entry(f.kind).or_default() += 1;
                let idx = cone(&e.log, at);
                if o.shortest
                    .get(&f.kind)
                    .is_none_or(|t| t.recs.len() > idx.len())
                {
                    let pos = idx.len() - 1;
                    o.shortest.insert(
                        f.kind,
                        Trace {
                            recs: idx.iter().map(|&i| e.log[i].clone()).collect(),
                            at: pos,
                            kind: f.kind,
                            detail: f.detail.clone(),
                            full_len: e.log.len(),
                        },
                    );
                }
            }
        }
    }

    /// Depth-first over the choices, with sleep sets: a sibling explored
    /// earlier stays asleep below while it is independent of the steps
    /// taken, since running it later gives an equivalent interleaving.
    fn dfs(&mut self, e: &mut Exec<'_>, sched: &mut Vec<usize>, sleep: Vec<(usize, Fp)>) {
        let cands: Vec<_> = (0..e.actors())
            .filter_map(|a| e.next_fp(a).map(|f| (a, f)))
            .collect();
        if cands.is_empty() {
            self.leaf(e);
            return;
        }
        let mut done: Vec<(usize, Fp)> = Vec::new();
        let mut fresh = true;
        for (a, fp) in cands {
            if self.reduce && sleep.iter().any(|(b, _)| *b == a) {
                continue;
            }
            if self.out.executions >= self.max {
                self.out.truncated = true;
                return;
            }
            if !fresh {
                e.replay_into(sched);
            }
            fresh = false;
            let below: Vec<(usize, Fp)> = if self.reduce {
                sleep
                    .iter()
                    .chain(done.iter())
                    .filter(|(_, f)| !f.conflicts(&fp))
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            e.step(a);
            sched.push(a);
            self.dfs(e, sched, below);
            sched.pop();
            done.push((a, fp));
        }
        if fresh {
            self.out.blocked += 1;
        }
    }
}

/// Explore every interleaving (up to `max` executions), with the reduction.
pub fn explore(s: &Script, extra_faults: &[FaultRule], max: u64) -> Outcome {
    explore_with(s, extra_faults, max, true)
}

/// Explore with or without the partial-order reduction (without it, every
/// interleaving is run: for cross-checking the reduction).
pub fn explore_with(s: &Script, extra_faults: &[FaultRule], max: u64, reduce: bool) -> Outcome {
    let t0 = Instant::now();
    let prog = Program::new(s, extra_faults);
    let n = prog.invs.len();
    let mut d = Dfs {
        max,
        reduce,
        out: Outcome {
            inv_runs: vec![0; n],
            inv_removed: vec![0; n],
            ..Outcome::default()
        },
    };
    let mut e = Exec::new(s, &prog);
    d.dfs(&mut e, &mut Vec::new(), Vec::new());
    d.out.elapsed = t0.elapsed();
    d.out
}

/// The literal order: every line's steps at the position written, posted
/// commands executed as soon as they are posted, a miss retried in place.
#[derive(Debug, Clone)]
pub struct Literal {
    pub recs: Vec<Rec>,
    pub error: Option<ExecError>,
}

impl Literal {
    pub fn kinds(&self) -> BTreeSet<Kind> {
        self.recs
            .iter()
            .flat_map(|r| r.findings.iter().map(|f| f.kind))
            .collect()
    }
}

pub fn literal(s: &Script, extra_faults: &[FaultRule]) -> Literal {
    let prog = Program::new(s, extra_faults);
    let model = Model::new(s, &prog.faults);
    literal_on(s, &prog, model).0
}

/// The literal order on any backend (the guest's `amdvi-script` runs it on
/// the real device); the backend is handed back for its own reporting.
pub fn literal_on<B: Backend>(s: &Script, prog: &Program, backend: B) -> (Literal, B) {
    let mut e = Exec::with_backend(s, prog, backend);
    let drain = |e: &mut Exec<'_, B>| {
        while e.next_fp(IOMMU).is_some() {
            e.step(IOMMU);
        }
    };
    for l in &s.lines {
        let actor = match l.step {
            crate::script::Step::Cpu(_) => CPU,
            crate::script::Step::Dev { dev, .. } => dev + 2,
        };
        while e.next_line(actor) == Some(l.line) {
            drain(&mut e);
            if e.next_fp(actor).is_none() {
                break;
            }
            e.step(actor);
            drain(&mut e);
        }
    }
    // Whatever is left (nothing, unless a CPU sequence stopped early).
    loop {
        drain(&mut e);
        match (0..e.actors()).find(|&a| e.next_fp(a).is_some()) {
            Some(a) => e.step(a),
            None => break,
        }
    }
    e.finish();
    (
        Literal {
            error: e.error.clone(),
            recs: e.log,
        },
        e.backend,
    )
}
