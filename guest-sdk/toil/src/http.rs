//! L1 request tier: [`Request`], [`Response`], and the [`Rest`] trait that
//! `#[toil::request]` (alias `#[toil::rest]`) implements.

use toil_abi::request::{encode_response, RequestView};
use toil_abi::status;

/// An HTTP request, borrowing the bytes the host handed over.
pub struct Request<'a> {
    view: RequestView<'a>,
}

impl<'a> Request<'a> {
    /// Decodes a request in the ABI v1 encoding.
    pub fn decode(bytes: &'a [u8]) -> Option<Request<'a>> {
        RequestView::decode(bytes).ok().map(|view| Request { view })
    }

    pub fn method(&self) -> &'a str {
        self.view.method
    }

    /// The path, without the query string.
    pub fn path(&self) -> &'a str {
        self.view.path
    }

    /// The raw query string (without `?`).
    pub fn query_string(&self) -> &'a str {
        self.view.query
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a space).
    pub fn query(&self, name: &str) -> Option<String> {
        self.view.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = toil_abi::route::percent_decode(&k.replace('+', " "));
            (k == name).then(|| toil_abi::route::percent_decode(&v.replace('+', " ")))
        })
    }

    /// The route pattern the host matched, e.g. `/users/:id`.
    pub fn route(&self) -> &'a str {
        self.route_key().split_once(' ').map_or("", |(_, p)| p)
    }

    /// `"<DECLARED METHOD> <pattern>"`, what generated dispatch code matches on.
    #[doc(hidden)]
    pub fn route_key(&self) -> &'a str {
        self.view.route
    }

    /// A path parameter captured by the route (`:id`, `*rest`), percent-decoded.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.view.params.find(name, |a, b| a == b)
    }

    /// A header as text (names compare case-insensitively); `None` if absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.header_bytes(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn header_bytes(&self, name: &str) -> Option<&'a [u8]> {
        self.view.headers.find(name, |a, b| a.eq_ignore_ascii_case(b))
    }

    /// All headers in arrival order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.view.headers.iter()
    }

    pub fn body(&self) -> &'a [u8] {
        self.view.body
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&'a str, std::str::Utf8Error> {
        std::str::from_utf8(self.view.body)
    }

    /// The body parsed as JSON.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.view.body)
    }
}

/// An HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    /// `200` with a `text/plain; charset=utf-8` body.
    pub fn text(body: impl Into<String>) -> Self {
        Response::new(200).with_header("content-type", "text/plain; charset=utf-8").with_body(body.into())
    }

    /// `200` with a `text/html; charset=utf-8` body.
    pub fn html(body: impl Into<String>) -> Self {
        Response::new(200).with_header("content-type", "text/html; charset=utf-8").with_body(body.into())
    }

    /// `200` with `application/json` serialised from `value`.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(200).with_header("content-type", "application/json").with_body(body),
            Err(e) => Response::new(500).with_body(format!("JSON encoding failed: {e}")),
        }
    }

    /// `200` with an `application/octet-stream` body.
    pub fn bytes(body: impl Into<Vec<u8>>) -> Self {
        Response::new(200).with_header("content-type", "application/octet-stream").with_body(body)
    }

    pub fn not_found() -> Self {
        Response::new(404).with_header("content-type", "text/plain; charset=utf-8").with_body("not found")
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a header (repeat the call for repeated headers).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The ABI v1 encoding written back to the host.
    pub fn encode(&self) -> Vec<u8> {
        encode_response(self.status, &self.headers, &self.body)
    }
}

/// What a handler may return.
pub trait IntoResponse {
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl IntoResponse for &str {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        Response::bytes(self)
    }
}

/// `(status, body)`.
impl<T: IntoResponse> IntoResponse for (u16, T) {
    fn into_response(self) -> Response {
        self.1.into_response().with_status(self.0)
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(v) => v.into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// A set of routes; implemented by `#[toil::request]`. `toil::export!`
/// declares the routes of the types it lists and dispatches to them.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a #[toil::request] type",
    label = "listed under `request` in toil::export!",
    note = "`request: [..]` lists types whose `impl` carries #[toil::request] (alias #[toil::rest])"
)]
pub trait Rest {
    /// `(METHOD, pattern)` of each route, in declaration order: what the
    /// manifest declares for this type.
    const ROUTES: &'static [(&'static str, &'static str)];
    /// The response of the handler declared for the request's route, or
    /// `None` if this type declares no such route.
    fn dispatch(req: &Request<'_>) -> Option<Response>;
}

/// The body of the generated `handle` export.
pub fn handle(input_len: i32, dispatch: impl FnOnce(&Request<'_>) -> Option<Response>) -> i32 {
    let input = crate::host::read_input(input_len);
    let Some(req) = Request::decode(&input) else {
        return status::BAD_INPUT;
    };
    match dispatch(&req) {
        Some(resp) => {
            crate::host::write_output(&resp.encode());
            status::OK
        }
        None => status::NO_HANDLER,
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use toil_abi::manifest::Manifest;
    use toil_abi::request::{encode_request, ResponseView};

    struct Listed;

    #[crate::request]
    impl Listed {
        #[get("/listed")]
        #[post("/listed/:id")]
        fn listed(req: &Request) -> String {
            req.param("id").unwrap_or_default().into()
        }
    }

    struct Unlisted;

    #[allow(dead_code)] // what the compiler warns about: the type is not in export!
    #[crate::rest]
    impl Unlisted {
        #[get("/unlisted")]
        fn unlisted() -> &'static str {
            "unlisted"
        }
    }

    crate::export! { request: [Listed] }

    #[test]
    fn the_manifest_declares_the_exported_types_only() {
        let m = Manifest::decode(&__TOIL_REQUEST_MANIFEST).unwrap();
        let routes: Vec<_> = m.routes.iter().map(|r| format!("{} {}", r.method, r.pattern)).collect();
        assert_eq!(routes, ["GET /listed", "POST /listed/:id"]);
        assert_eq!(Unlisted::ROUTES, [("GET", "/unlisted")]);
    }

    #[test]
    fn handle_decodes_dispatches_and_encodes() {
        let params = vec![("id".to_string(), "7".to_string())];
        let input = encode_request("GET", "/u/7", "q=a+b&x=%2F", "GET /u/:id", &params, [("X-Y", &b"z"[..])].into_iter(), b"");
        let n = crate::host::set_input(input);
        let rc = handle(n, |req| {
            assert_eq!(req.route(), "/u/:id");
            assert_eq!(req.query("q").as_deref(), Some("a b"));
            assert_eq!(req.query("x").as_deref(), Some("/"));
            assert_eq!(req.header("x-y"), Some("z"));
            Some((201, format!("id={}", req.param("id").unwrap())).into_response())
        });
        assert_eq!(rc, status::OK);
        let out = crate::host::take_output();
        let resp = ResponseView::decode(&out).unwrap();
        assert_eq!((resp.status, resp.body), (201, &b"id=7"[..]));
        assert_eq!(handle(crate::host::set_input(vec![1, 2]), |_| None), status::BAD_INPUT);
    }
}
