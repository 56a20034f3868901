// Schedules the host would refuse: a minute out of range, an interval under
// the 1 s minimum. Each is reported on its expression.
#[derive(Default)]
struct Jobs;

#[toil::daemon]
impl Jobs {
    #[scheduled("61 * * * *")]
    fn hourly(&mut self) {}

    #[scheduled("500ms")]
    fn often(&mut self) {}
}

toil::export! { daemon: Jobs }

fn main() {}
