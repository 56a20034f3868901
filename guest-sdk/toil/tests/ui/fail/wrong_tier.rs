// A stream type listed as a request type.
#[derive(Default)]
struct Echo;

#[toil::stream("echo")]
impl Echo {}

toil::export! { request: [Echo] }

fn main() {}
