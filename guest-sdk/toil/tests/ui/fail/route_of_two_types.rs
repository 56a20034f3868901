// Two listed types declaring one route: the host would serve only one of them.
struct Api;

#[toil::request]
impl Api {
    #[get("/health")]
    fn health() -> &'static str {
        "ok"
    }
}

struct Admin;

#[toil::request]
impl Admin {
    #[get("/health")]
    fn admin_health() -> String {
        "admin ok".into()
    }
}

toil::export! { request: [Api, Admin] }

fn main() {}
