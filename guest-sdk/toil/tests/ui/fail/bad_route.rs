// A route pattern the host would refuse.
use toil::prelude::*;

struct Api;

#[toil::request]
impl Api {
    #[get("/files/*path/raw")]
    fn raw(req: &Request) -> String {
        req.path().to_string()
    }
}

toil::export! { request: [Api] }

fn main() {}
