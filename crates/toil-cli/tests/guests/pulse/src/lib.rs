//! Test guest for the cluster tests and the daemon benchmark: a daemon
//! whose every-second task logs each tick with the node that fired it, so
//! the tests can prove from the guests' own logs that no tick fired twice.

use toil::prelude::*;

#[derive(Default)]
struct Pulse {
    node: String,
    fencing: u64,
}

#[toil::daemon]
impl Pulse {
    #[start]
    fn start(&mut self, info: &StartInfo) {
        self.node = info.node.to_string();
        self.fencing = info.fencing;
        println!("pulse started node={} fencing={}", info.node, info.fencing);
    }

    #[scheduled("1s")]
    fn beat(&mut self, tick: &Tick) {
        println!("pulse fired fire_time_ms={} node={} fencing={}", tick.fire_time_ms, self.node, self.fencing);
    }
}

toil::export! { daemon: Pulse }
