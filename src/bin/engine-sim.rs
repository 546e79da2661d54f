//! `engine-sim`: the test engine (see `pool_managerd::engine_sim`).

fn main() {
    pool_managerd::engine_sim::main(std::env::args())
}
