//! Random workloads: their seed, `WALFLOW_SEED` when set (a replay), else
//! a new one, printed either way so that a failing run can be replayed;
//! and a small deterministic generator. In the tests as `common::seed()`
//! and `common::Rng`; the benchmarks include this file by path.

/// The workload's seed: `WALFLOW_SEED`, or a new one from the clock.
pub fn seed() -> u64 {
    seed_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

/// The workload's seed: `WALFLOW_SEED`, or `default` (a benchmark whose
/// figures are compared across runs writes the same rows each time).
pub fn seed_or(default: u64) -> u64 {
    seed_or_else(|| default)
}

fn seed_or_else(default: impl FnOnce() -> u64) -> u64 {
    let seed = match std::env::var("WALFLOW_SEED") {
        Ok(s) => s.parse().expect("WALFLOW_SEED is a number"),
        Err(_) => default(),
    };
    eprintln!("workload seed: {seed} (replay with WALFLOW_SEED={seed})");
    seed
}

/// A small deterministic generator (xorshift).
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded with `seed` (xorshift needs a state other than 0).
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`0` when `n` is `0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
