//! examples/hello: the L1 request tier. Text, JSON, path parameters, a
//! query string and an echoed POST body.

use serde::{Deserialize, Serialize};
use toil::prelude::*;

struct Hello;

#[derive(Serialize)]
struct User<'a> {
    id: &'a str,
    name: String,
}

#[derive(Deserialize, Serialize)]
struct Greeting {
    to: String,
}

#[toil::rest]
impl Hello {
    #[get("/")]
    fn index() -> &'static str {
        "Hello from Toil Edge!\n"
    }

    #[get("/hello/:name")]
    fn hello(req: &Request) -> String {
        let name = req.param("name").unwrap_or("world");
        let greeting = req.query("greeting").unwrap_or_else(|| "Hello".into());
        format!("{greeting}, {name}!\n")
    }

    #[get("/users/:id")]
    fn user(req: &Request) -> Response {
        let id = req.param("id").unwrap_or_default();
        Response::json(&User { id, name: format!("user-{id}") })
    }

    #[post("/echo")]
    fn echo(req: &Request) -> Response {
        let content_type = req.header("content-type").unwrap_or("application/octet-stream");
        Response::new(200).with_header("content-type", content_type).with_body(req.body())
    }

    #[post("/greet")]
    fn greet(req: &Request) -> Response {
        match req.json::<Greeting>() {
            Ok(g) => Response::json(&serde_json_like(&g.to)),
            Err(e) => Response::text(format!("bad JSON body: {e}\n")).with_status(400),
        }
    }

    #[get("/files/*path")]
    fn files(req: &Request) -> String {
        println!("files requested: {}", req.param("path").unwrap_or(""));
        format!("you asked for {:?}\n", req.param("path").unwrap_or(""))
    }
}

fn serde_json_like(to: &str) -> Greeting {
    Greeting { to: format!("Hello, {to}!") }
}

toil::export! { rest: [Hello] }
