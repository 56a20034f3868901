// A hook returns () or Result<(), E: Display>.
use toil::prelude::*;

#[derive(Default)]
struct Echo {
    count: u32,
}

#[toil::stream("echo")]
impl Echo {
    #[message]
    fn message(&mut self, _frame: Frame<'_>) -> u32 {
        self.count += 1;
        self.count
    }
}

toil::export! { stream: [Echo] }

fn main() {}
