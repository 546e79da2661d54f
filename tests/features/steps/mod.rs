//! Step definitions, one module per concept. Cucumber collects the `#[given]`, `#[when]` and
//! `#[then]` functions of every module compiled in; nothing needs to be re-exported.

pub mod health;
pub mod journal;
pub mod leases;
pub mod pools;
