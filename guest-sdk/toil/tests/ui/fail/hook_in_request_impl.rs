// A stream hook in a request impl.
struct Api;

#[toil::request]
impl Api {
    #[get("/")]
    #[message]
    fn index() {}
}

toil::export! { request: [Api] }

fn main() {}
