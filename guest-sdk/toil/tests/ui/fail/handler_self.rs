// Request handlers are associated functions: a fresh instance serves each request.
struct Api;

#[toil::request]
impl Api {
    #[get("/")]
    fn index(&self) -> &'static str {
        "hi"
    }
}

toil::export! { request: [Api] }

fn main() {}
