//! Shared by the benches: where the release binaries are, how big to go, a
//! cheap PRNG, and small statistics. Figures go to stdout, progress to stderr.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub const MIB: f64 = 1024.0 * 1024.0;

/// `target/release`, found from this bench's own executable
/// (`target/release/deps/NAME-HASH`), holding `qci`, `qci-dom0` and `qci-vm`.
/// Exits with a clear message when they are not built.
pub fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("bench executable is in target/release/deps")
        .to_owned();
    for name in ["qci", "qci-dom0", "qci-vm"] {
        if !dir.join(name).is_file() {
            eprintln!(
                "bench: {name} is not built in {}: run cargo build --release first \
                 (cargo build --release --workspace --bins, or scripts/bench)",
                dir.display()
            );
            std::process::exit(2);
        }
    }
    dir
}

/// `QCI_BENCH_SCALE` (default 1): multiplies every size, to run smaller.
pub fn scale() -> f64 {
    match std::env::var("QCI_BENCH_SCALE") {
        Err(_) => 1.0,
        Ok(s) => match s.parse::<f64>() {
            Ok(f) if f > 0.0 && f.is_finite() => f,
            _ => {
                eprintln!("bench: QCI_BENCH_SCALE must be a positive number, not {s:?}");
                std::process::exit(2);
            }
        },
    }
}

/// `n` scaled, at least `min`.
pub fn scaled(n: u64, min: u64) -> u64 {
    ((n as f64 * scale()).round() as u64).max(min)
}

/// splitmix64: fast, and its output does not compress or leave holes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

pub fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    let n = t.len();
    if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB / d.as_secs_f64()
}

/// Flushes dirty pages, so one run's writeback does not slow the next.
pub fn sync() {
    let _ = std::process::Command::new("sync").status();
}
