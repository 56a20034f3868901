// A stream name is one URL path segment.
#[derive(Default)]
struct Chat;

#[toil::stream("chat/room")]
impl Chat {}

toil::export! { stream: [Chat] }

fn main() {}
