//! The control loops of a partition, sans-IO (docs/ARCHITECTURE.md, Invariants): the circuit
//! breaker that takes a broken partition out of rotation ([`breaker`], the `[breaker]` config
//! table is its [`BreakerConfig`](breaker::BreakerConfig)) and the adaptive limit of HSM calls in
//! flight ([`limiter`], fed by `[providers.NAME] min_inflight` and the partition's workers).
//! Both take `now` from the caller and are plain data; the glue that owns threads and clocks is
//! in `pipeline` (`breakers`, `gate`). `tuning/CONTROL.md` explains the rules and every default.

pub mod breaker;
pub mod limiter;
