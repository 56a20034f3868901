// One route, two handlers.
struct Api;

#[toil::request]
impl Api {
    #[get("/")]
    fn a() {}

    #[get("/")]
    fn b() {}
}

toil::export! { request: [Api] }

fn main() {}
