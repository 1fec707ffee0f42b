//! The pool's first promise, tested on the lease store alone: never two
//! jobs on one machine, whoever asks and in whatever order.

use super::*;
use std::sync::{Arc, Barrier};

/// Long enough for any honest wait here; a test that needs it has failed.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a waiter that must not get a machine is given to (wrongly) get one.
const REFUSE_WITHIN: Duration = Duration::from_millis(800);

fn machine(name: &str, qubes: &str) -> MachineConfig {
    toml::from_str(&format!(
        "name = \"{name}\"\nqubes = \"{qubes}\"\nbackend = \"local\"\npath = \"/nonexistent/{name}\"\n"
    ))
    .expect("a machine config")
}

fn machines(names: &[&str]) -> Vec<MachineConfig> {
    names.iter().map(|n| machine(n, "4.2")).collect()
}

fn store(dir: &Path) -> LeaseStore {
    LeaseStore::open(dir, "test-host").expect("open the lease store")
}

/// One acquire as the runner makes it, waiting at most `wait`.
fn take(
    store: &LeaseStore,
    job: &str,
    want: &Want,
    machines: &[MachineConfig],
    wait: Duration,
) -> Result<Lease, PoolError> {
    store.acquire(
        &JobId::parse(job).expect("a valid job id"),
        want,
        &[],
        machines,
        Duration::from_secs(3600),
        &AtomicBool::new(false),
        Instant::now() + wait,
        &mut |_| {},
    )
}

fn give_back(store: &LeaseStore, lease: &Lease, machines: &[MachineConfig]) {
    store
        .release(&lease.machine, &lease.job, lease.log_id, machines)
        .expect("release");
}

fn qubes() -> Want {
    Want::Qubes("4.2".into())
}

/// Waits until `n` waiters are in the queue, so the next one is behind them.
fn until_waiting(store: &LeaseStore, n: usize) {
    let end = Instant::now() + PATIENCE;
    while store.waiting().expect("count waiters") != n {
        assert!(Instant::now() < end, "never {n} waiters");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn of_two_acquirers_of_one_machine_exactly_one_wins_and_the_other_waits() {
    let dir = tempfile::tempdir().unwrap();
    let pool = machines(&["m1"]);
    let start = Arc::new(Barrier::new(2));
    let racers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|job| {
            let (dir, pool, start) = (dir.path().to_owned(), pool.clone(), start.clone());
            std::thread::spawn(move || {
                // Each its own store and connection, as two processes have.
                let store = store(&dir);
                start.wait();
                (job, take(&store, job, &qubes(), &pool, REFUSE_WITHIN))
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    let won: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    let lost = results.iter().find(|(_, r)| r.is_err()).unwrap();
    assert!(
        matches!(lost.1, Err(PoolError::QueueTimeout)),
        "the loser must wait, not fail: {results:?}"
    );
    let store = store(dir.path());
    assert_eq!(store.leases().unwrap().len(), 1);
    assert_eq!(store.waiting().unwrap(), 0, "a timed-out waiter leaves");
    // Once released, the machine is free for the loser.
    let lease = won[0].1.as_ref().unwrap();
    give_back(&store, lease, &pool);
    take(&store, lost.0, &qubes(), &pool, PATIENCE).expect("the machine, now free");
}

#[test]
fn waiters_get_a_machine_in_the_order_they_came() {
    let dir = tempfile::tempdir().unwrap();
    let pool = machines(&["m1"]);
    let store = store(dir.path());
    let first = take(&store, "holder", &qubes(), &pool, PATIENCE).unwrap();
    let (got, order) = std::sync::mpsc::channel();
    let mut waiters = Vec::new();
    for (n, job) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let (dir, pool, got) = (dir.path().to_owned(), pool.clone(), got.clone());
        waiters.push(std::thread::spawn(move || {
            let store = super::tests::store(&dir);
            let lease = take(&store, job, &qubes(), &pool, PATIENCE).unwrap();
            got.send(job).unwrap();
            // Hold it a moment, so a wrong order would show.
            std::thread::sleep(Duration::from_millis(20));
            give_back(&store, &lease, &pool);
        }));
        until_waiting(&store, n + 1);
    }
    give_back(&store, &first, &pool);
    for w in waiters {
        w.join().unwrap();
    }
    let order: Vec<_> = order.try_iter().collect();
    assert_eq!(order, ["w1", "w2", "w3"]);
}

#[test]
fn a_waiter_takes_the_first_free_machine_it_accepts_and_skips_what_it_excludes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = vec![
        machine("m1", "4.2"),
        machine("m2", "4.3"),
        machine("m3", "4.3"),
    ];
    let store = store(dir.path());
    let on_43 = Want::Qubes("4.3".into());
    let lease = store
        .acquire(
            &JobId::parse("j").unwrap(),
            &on_43,
            &["m2".to_owned()],
            &pool,
            Duration::from_secs(60),
            &AtomicBool::new(false),
            Instant::now() + PATIENCE,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(lease.machine, "m3");
    let named = take(&store, "k", &Want::Machine("m1".into()), &pool, PATIENCE).unwrap();
    assert_eq!(named.machine, "m1");
    // m1 is held and m3 too: a second waiter for either must wait.
    let refused = take(
        &store,
        "l",
        &Want::Machine("m3".into()),
        &pool,
        REFUSE_WITHIN,
    );
    assert!(
        matches!(refused, Err(PoolError::QueueTimeout)),
        "{refused:?}"
    );
}

#[test]
fn a_lease_whose_holder_died_is_taken_over_by_one_reconciler_only_then_freed() {
    let dir = tempfile::tempdir().unwrap();
    let pool = machines(&["m1"]);
    let store = store(dir.path());
    let lease = take(&store, "dead-job", &qubes(), &pool, PATIENCE).unwrap();
    // The holder's process is gone: a pid and start time that do not match.
    store
        .conn()
        .unwrap()
        .execute("UPDATE leases SET owner = 'no-boot:1:1', pid = 1", [])
        .unwrap();
    let row = store.leases().unwrap().remove(0);
    assert!(!owner_alive(&row.owner));
    // Still held: a dead holder does not free the machine by itself.
    let early = take(&store, "next", &qubes(), &pool, REFUSE_WITHIN);
    assert!(matches!(early, Err(PoolError::QueueTimeout)), "{early:?}");

    let start = Arc::new(Barrier::new(3));
    let reconcilers: Vec<_> = (0..3)
        .map(|_| {
            let (dir, row, start) = (dir.path().to_owned(), row.clone(), start.clone());
            std::thread::spawn(move || {
                let store = super::tests::store(&dir);
                start.wait();
                store.take_over(&row).unwrap()
            })
        })
        .collect();
    let won = reconcilers
        .into_iter()
        .map(|r| r.join().unwrap())
        .filter(|&won| won)
        .count();
    assert_eq!(won, 1, "exactly one reconciler takes the dead lease over");
    assert_eq!(store.leases().unwrap()[0].owner, me());
    give_back(&store, &lease, &pool);
    take(&store, "next", &qubes(), &pool, PATIENCE).expect("freed after the takeover");
}

#[test]
fn a_dead_waiter_ahead_does_not_hold_up_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let pool = machines(&["m1"]);
    let store = store(dir.path());
    store
        .conn()
        .unwrap()
        .execute(
            "INSERT INTO waiters (job, want_machine, want_qubes, exclude, owner, socket, since)
             VALUES ('ghost', NULL, '4.2', '', 'no-boot:1:1', 'qci-wait/ghost', 0)",
            [],
        )
        .unwrap();
    let lease = take(&store, "live", &qubes(), &pool, PATIENCE).unwrap();
    assert_eq!(lease.machine, "m1");
    assert_eq!(store.waiting().unwrap(), 0, "the dead waiter's row is gone");
}

#[test]
fn another_hosts_marker_keeps_the_machine_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let pool = machines(&["m1"]);
    let store = store(dir.path());
    store
        .note_foreign("m1", "other-host", now() + 600.0)
        .unwrap();
    let held = take(&store, "j", &qubes(), &pool, REFUSE_WITHIN);
    assert!(matches!(held, Err(PoolError::QueueTimeout)), "{held:?}");
    // The other host's lease ran out: its marker no longer counts.
    store.note_foreign("m1", "other-host", now() - 1.0).unwrap();
    let lease = take(&store, "j", &qubes(), &pool, PATIENCE).unwrap();
    assert_eq!(lease.machine, "m1");
}

/// A tiny seeded generator (xorshift64*): the same seed, the same run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

const CHURN_MACHINES: [&str; 3] = ["m1", "m2", "m3"];
const CHURN_ROUNDS: u64 = 12;

/// How a churn worker saw the promise broken, or could not go on.
#[derive(Debug, thiserror::Error)]
enum ChurnError {
    #[error("seed {seed} round {round}: {source}")]
    Acquire {
        seed: u64,
        round: u64,
        source: PoolError,
    },
    #[error("seed {seed}: {machine} held twice: {source}")]
    HeldTwice {
        seed: u64,
        machine: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Witness(#[from] std::io::Error),
}

/// One worker's random acquires and releases. While it holds a machine it
/// owns `held-MACHINE` (created exclusively), a witness outside the lease
/// store: a second holder at the same time cannot create it.
fn churn(dir: &Path, seed: u64) -> Result<(), ChurnError> {
    let pool = machines(&CHURN_MACHINES);
    let store = store(dir);
    let mut rng = Rng(seed | 1);
    for round in 0..CHURN_ROUNDS {
        let job = format!("s{seed}-r{round}");
        let want = match rng.below(3) {
            0 => Want::Machine(CHURN_MACHINES[rng.below(3) as usize].to_owned()),
            _ => qubes(),
        };
        let lease =
            take(&store, &job, &want, &pool, PATIENCE).map_err(|source| ChurnError::Acquire {
                seed,
                round,
                source,
            })?;
        let witness = dir.join(format!("held-{}", lease.machine));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&witness)
            .map_err(|source| ChurnError::HeldTwice {
                seed,
                machine: lease.machine.clone(),
                source,
            })?;
        std::thread::sleep(Duration::from_millis(rng.below(15)));
        std::fs::remove_file(&witness)?;
        give_back(&store, &lease, &pool);
        if rng.below(2) == 0 {
            std::thread::yield_now();
        }
    }
    Ok(())
}

/// Where a child process of the churn test finds its directory and seeds.
const CHURN_ENV: &str = "QCI_LEASE_CHURN";

/// Not a test of its own: the churn test's child processes run this.
#[test]
fn churn_worker_process() {
    let Ok(spec) = std::env::var(CHURN_ENV) else {
        return;
    };
    let (dir, seeds) = spec.split_once('|').expect("DIR|SEED,SEED");
    let workers: Vec<_> = seeds
        .split(',')
        .map(|s| {
            let (dir, seed) = (PathBuf::from(dir), s.parse::<u64>().expect("a seed"));
            std::thread::spawn(move || churn(&dir, seed))
        })
        .collect();
    for w in workers {
        if let Err(e) = w.join().expect("a churn thread") {
            panic!("{e}");
        }
    }
}

#[test]
fn random_acquires_and_releases_from_threads_and_processes_never_hold_a_machine_twice() {
    let dir = tempfile::tempdir().unwrap();
    let base: u64 = std::env::var("QCI_LEASE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now().to_bits());
    eprintln!("churn seed {base} (QCI_LEASE_SEED={base} repeats this run)");
    let children: Vec<_> = (0..2u64)
        .map(|p| {
            let seeds: Vec<String> = (0..3).map(|t| (base + 10 * p + t).to_string()).collect();
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "lease::tests::churn_worker_process", "--quiet"])
                .env(
                    CHURN_ENV,
                    format!("{}|{}", dir.path().display(), seeds.join(",")),
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("a churn process")
        })
        .collect();
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || churn(&dir, base + 100 + t))
        })
        .collect();
    for t in threads {
        if let Err(e) = t.join().unwrap() {
            panic!("{e}");
        }
    }
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a churn process failed");
    }
    // The lease log agrees: on each machine, one lease ends before the next.
    let log = store(dir.path()).lease_log().unwrap();
    assert_eq!(log.len() as u64, (3 + 2 * 3) * CHURN_ROUNDS);
    for m in CHURN_MACHINES {
        let mut on: Vec<_> = log.iter().filter(|l| l.machine == m).collect();
        on.sort_by(|a, b| a.acquired_at.total_cmp(&b.acquired_at));
        for pair in on.windows(2) {
            let released = pair[0].released_at.expect("every lease released");
            assert!(
                released <= pair[1].acquired_at,
                "{m} held by {} and {} at once",
                pair[0].job,
                pair[1].job
            );
        }
    }
}
