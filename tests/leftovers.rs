//! Nothing a job leaves behind stops the next one: not a workspace nested
//! deeper than the open-file limit, not a process that left its session
//! and dropped the runner's mark, and not the dev VM's old workspaces.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use support::{Scratch, is_dead, job_id};

#[test]
fn a_tree_ten_thousand_deep_does_not_block_the_next_job() {
    let s = Scratch::new();
    // Five rounds of 2000 levels: each `mkdir -p` path stays under PATH_MAX.
    let step = "P=a; i=1; while [ $i -lt 2000 ]; do P=$P/a; i=$((i+1)); done; \
                for r in 1 2 3 4 5; do mkdir -p $P && cd -P $P || exit 1; done; echo deep";
    let out = s.run_with_open_files(&s.one_step("deep", step, ""), 1024);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("[deep] deep"), "{stdout}");
    let deep = s.work_dir().join("jobs").join(job_id(&stdout));

    let (_, state, _) = s.ended(&s.run_with_open_files(&s.noop_project(), 1024), 0);
    assert_eq!(state, "success");
    assert!(!deep.exists(), "the deep tree is still there");
}

#[test]
fn a_process_that_left_its_session_and_dropped_the_mark_dies_with_the_job() {
    let s = Scratch::new();
    // Two escapes: one backgrounded (orphaned when the step's shell ends),
    // one that `setsid -f` forks away at once; both drop QCI_RUNNER.
    let step = "setsid sh -c 'echo $$ > a.pid; exec env -u QCI_RUNNER sleep 1000' >/dev/null 2>&1 & \
                setsid -f sh -c 'echo $$ > b.pid; exec env -u QCI_RUNNER sleep 1000' >/dev/null 2>&1; \
                while [ ! -s a.pid ] || [ ! -s b.pid ]; do sleep 0.05; done; echo escaped";
    let out = s.run(&s.one_step("escape", step, ""), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let job = job_id(&stdout);
    let ws = s.work_dir().join("jobs").join(&job);
    let pids: Vec<i32> = ["a.pid", "b.pid"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(ws.join(f)).unwrap();
            text.trim().parse().unwrap()
        })
        .collect();
    for pid in &pids {
        assert!(is_dead(*pid), "{pid} outlived the job");
    }
    let log = s.job_log(&job);
    assert!(
        log.contains("[qci] stopped 2 leftover process(es) of this run"),
        "{log}"
    );
}

#[test]
fn the_dev_vm_keeps_only_the_last_workspaces() {
    let s = Scratch::new();
    s.prepare_machine();
    let home = s.machine().join("sd-dev/home/user");
    std::fs::write(home.join(".qci/config.toml"), "keep_workspaces = 2\n").unwrap();
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let out = s.run(&s.noop_project(), &[]);
        assert_eq!(out.status.code(), Some(0));
        jobs.push(job_id(&String::from_utf8_lossy(&out.stdout)));
        // Workspaces are told apart by age, to the file system's clock tick.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut left: Vec<String> = std::fs::read_dir(home.join(".qci/work"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut newest = jobs[2..].to_vec();
    newest.sort();
    assert_eq!(left, newest);
}
