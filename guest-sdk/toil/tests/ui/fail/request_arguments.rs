// #[request] takes no arguments (the routes are on the methods).
struct Api;

#[toil::request("/api")]
impl Api {}

toil::export! { request: [Api] }

fn main() {}
