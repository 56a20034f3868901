// A type left out of export! declares nothing, and the compiler says so.
#![deny(dead_code)]

struct Forgotten;

#[toil::request]
impl Forgotten {
    #[get("/forgotten")]
    fn forgotten() -> &'static str {
        "never served"
    }
}

toil::export! {}

fn main() {}
