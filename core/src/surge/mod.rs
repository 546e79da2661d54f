//! Reload without a gap (a surge): the fold of its events into a pool's second engine, and
//! the effects they ask for.
//!
//! A surge starts the new engine beside the old one in the pool's other [`Lane`] (its own pid
//! file, log, cgroup leaf and shell worker), on a port of `[reload] surge_ports`. Once the new
//! engine is healthy and proven (its port's owner, its placement) and the handoff file names
//! it, `SurgeSwitched` makes it the pool's engine in one event: new leases go to it, and the
//! old engine becomes the second engine, finishing the leases it held until they are returned
//! or the drain deadline passes. A failed surge kills the new engine; the old one never
//! stopped, so the pool never left `ready`.
//!
//! Owns: [`Second`]'s life in the fold and its effects.
//! Never: decides (that is `decide::surge`), reads a clock, or touches the pool's primary
//! engine except at the switch.

mod effect;
mod evolve;

pub(crate) use effect::{second_continue_effects, surge_effects};
pub(crate) use evolve::apply_surge;

use crate::state::Lane;
#[allow(unused_imports)] // named in the doc above
use crate::state::Second;

/// The lane a pool's second engine runs in: the one its engine does not.
pub(crate) fn second_lane(pool: &crate::state::Pool) -> Lane {
    pool.lane.other()
}
