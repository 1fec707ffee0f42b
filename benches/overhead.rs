//! Fixed cost of a job: `qci run --local` (release binaries, emulated
//! machine in a temporary state directory) on a project whose three steps
//! are `true`, against the reference-style runner doing the same job and
//! against `sh -c true` three times.
//!
//! One warm-up run of each; then paired rounds, the order alternating, of
//! qci, the reference runner and the bare steps (21 rounds; `QCI_BENCH_SCALE`
//! scales the count, at least 5). The figures are medians.

mod common;

use common::{MIN_PAIRS, Qci, Reference, all_ms, median, paired, range, row, scaled, shell};
use std::time::Duration;

const STEPS: [&str; 3] = ["true", "true", "true"];

fn main() {
    let bin = common::release_dir();
    let rounds = (scaled(21, 1) as usize).max(MIN_PAIRS);
    let scratch = common::scratch();
    let project = scratch.path().join("project");
    std::fs::create_dir(&project).expect("project dir");
    common::write_pipeline(
        &project,
        &[("one", STEPS[0]), ("two", STEPS[1]), ("three", STEPS[2])],
    );
    let qci = Qci::new(&bin, &scratch.path().join("state"));
    let reference = Reference::new();
    let work = scratch.path().join("reference-work");
    let ref_log = scratch.path().join("reference.log");
    let bare = || STEPS.iter().map(|s| shell(&project, s)).sum::<Duration>();

    eprintln!("overhead: warm-up (creates the machine)");
    qci.forget(&qci.run(&project, true));
    reference.run(&project, &work, &ref_log, &STEPS);
    bare();

    let (mut ours, mut theirs, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    eprintln!("overhead: {rounds} rounds");
    for i in 0..rounds {
        paired(
            i,
            || {
                let job = qci.run(&project, true);
                qci.forget(&job);
                ours.push(job.elapsed);
            },
            || theirs.push(reference.run(&project, &work, &ref_log, &STEPS)),
        );
        steps.push(bare());
    }

    let (ours, theirs, steps) = (all_ms(&ours), all_ms(&theirs), all_ms(&steps));
    let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
    let (m_ours, m_theirs, m_ratio) = (median(&ours), median(&theirs), median(&ratios));
    let (lo, hi) = range(&ours);
    row(
        &format!("`qci run --local`, 3 steps `true` (median of {rounds})"),
        "< 50 ms",
        &format!("{m_ours:.1} ms (range {lo:.1}-{hi:.1})"),
        Some(m_ours < 50.0),
    );
    row(
        "  same job, reference-style Python runner",
        "qci faster: ratio < 1",
        &format!("{m_theirs:.1} ms; qci/reference {m_ratio:.2}x (median of pair ratios)"),
        Some(m_ratio < 1.0),
    );
    row(
        "  the steps alone, `sh -c true` x3",
        "",
        &format!("{:.1} ms", median(&steps)),
        None,
    );
}
