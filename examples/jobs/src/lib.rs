//! examples/jobs: the L4 daemon tier. One elected box per domain runs a task
//! every few seconds and an hourly cron task, each logging its tick.

use toil::prelude::*;

#[derive(Default)]
struct Jobs {
    ticks: u64,
}

#[toil::daemon]
impl Jobs {
    #[start]
    fn start(&mut self, info: &StartInfo) {
        println!("jobs daemon started on node {} (fencing {})", info.node, info.fencing);
    }

    #[scheduled("5s")]
    fn heartbeat(&mut self, tick: &Tick) {
        self.ticks += 1;
        println!("tick task={} fire_time_ms={} n={}", tick.task, tick.fire_time_ms, self.ticks);
    }

    #[scheduled("0 0 * * * *")]
    fn hourly(&mut self, tick: &Tick) {
        println!("tick task={} fire_time_ms={}", tick.task, tick.fire_time_ms);
    }
}

toil::export! { daemon: Jobs }
