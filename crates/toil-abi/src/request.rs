//! L1 request tier messages: the request the host hands to `handle`, and the
//! response the guest writes back with `output_write`.
//!
//! Request (host → guest, read with `input_read`):
//! ```text
//! method: str, path: str, query: str, route: str,
//! params: count × (name: str, value: str),
//! headers: count × (name: str, value: bytes),
//! body: bytes
//! ```
//! `route` is the manifest pattern the host matched (e.g. `/users/:id`) and
//! `params` its captured, percent-decoded values, so the guest dispatches on
//! the pattern without parsing the path again.
//!
//! Response (guest → host):
//! ```text
//! status: u16, headers: count × (name: str, value: bytes), body: bytes
//! ```

#[cfg(feature = "alloc")]
use crate::codec::Writer;
use crate::codec::{DecodeError, Reader};
#[cfg(feature = "alloc")]
use alloc::{string::String, vec::Vec};

/// A request as the guest sees it, borrowing the input buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub route: &'a str,
    pub params: PairList<'a, &'a str>,
    pub headers: PairList<'a, &'a [u8]>,
    pub body: &'a [u8],
}

/// A decoded list of name/value pairs, kept as its encoded bytes and walked on
/// demand so decoding allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairList<'a, V> {
    count: usize,
    raw: &'a [u8],
    _value: core::marker::PhantomData<V>,
}

/// How a pair's value is read from the wire.
pub trait PairValue<'a>: Sized {
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError>;
}

impl<'a> PairValue<'a> for &'a str {
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        r.str()
    }
}

impl<'a> PairValue<'a> for &'a [u8] {
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        r.bytes()
    }
}

impl<'a, V: PairValue<'a>> PairList<'a, V> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let count = r.count(8)?;
        let before = r.rest();
        for _ in 0..count {
            r.str()?;
            V::read(r)?;
        }
        let raw = &before[..before.len() - r.rest().len()];
        Ok(PairList { count, raw, _value: core::marker::PhantomData })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates the pairs in wire order. The list was validated when decoded.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, V)> + '_ {
        let mut r = Reader::new(self.raw);
        (0..self.count).map_while(move |_| Some((r.str().ok()?, V::read(&mut r).ok()?)))
    }

    /// First value under `name`; `eq` decides how names compare.
    pub fn find(&self, name: &str, eq: fn(&str, &str) -> bool) -> Option<V> {
        self.iter().find(|(n, _)| eq(n, name)).map(|(_, v)| v)
    }
}

impl<'a> RequestView<'a> {
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let view = RequestView {
            method: r.str()?,
            path: r.str()?,
            query: r.str()?,
            route: r.str()?,
            params: PairList::decode(&mut r)?,
            headers: PairList::decode(&mut r)?,
            body: r.bytes()?,
        };
        r.finish()?;
        Ok(view)
    }
}

/// Encodes a request for the guest (host side).
#[cfg(feature = "alloc")]
#[allow(clippy::too_many_arguments)]
pub fn encode_request<'h>(
    method: &str,
    path: &str,
    query: &str,
    route: &str,
    params: &[(String, String)],
    headers: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
    body: &[u8],
) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + path.len() + query.len() + body.len() + headers.len() * 32);
    w.str(method).str(path).str(query).str(route);
    w.u32(params.len() as u32);
    for (n, v) in params {
        w.str(n).str(v);
    }
    w.u32(headers.len() as u32);
    for (n, v) in headers {
        w.str(n).bytes(v);
    }
    w.bytes(body);
    w.into_vec()
}

/// A response as the host reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseView<'a> {
    pub status: u16,
    pub headers: PairList<'a, &'a [u8]>,
    pub body: &'a [u8],
}

impl<'a> ResponseView<'a> {
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let status = r.u16()?;
        if !(100..=999).contains(&status) {
            return Err(DecodeError::Invalid("response status"));
        }
        let view = ResponseView { status, headers: PairList::decode(&mut r)?, body: r.bytes()? };
        r.finish()?;
        Ok(view)
    }
}

/// Encodes a response (guest side).
#[cfg(feature = "alloc")]
pub fn encode_response(status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + body.len() + headers.len() * 32);
    w.u16(status).u32(headers.len() as u32);
    for (n, v) in headers {
        w.str(n).bytes(v);
    }
    w.bytes(body);
    w.into_vec()
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::{string::ToString, vec};

    #[test]
    fn request_round_trip() {
        let params = vec![("id".to_string(), "42".to_string())];
        let headers = [("content-type", &b"text/plain"[..]), ("x-a", &b"\xff"[..])];
        let buf = encode_request("POST", "/users/42", "a=1", "/users/:id", &params, headers.into_iter(), b"body");
        let v = RequestView::decode(&buf).unwrap();
        assert_eq!((v.method, v.path, v.query, v.route, v.body), ("POST", "/users/42", "a=1", "/users/:id", &b"body"[..]));
        assert_eq!(v.params.find("id", |a, b| a == b), Some("42"));
        assert_eq!(v.headers.len(), 2);
        assert_eq!(v.headers.find("X-A", |a, b| a.eq_ignore_ascii_case(b)), Some(&b"\xff"[..]));
        assert_eq!(v.headers.iter().count(), 2);
    }

    #[test]
    fn response_round_trip_and_rejects() {
        let buf = encode_response(201, &[("x".to_string(), b"y".to_vec())], b"ok");
        let v = ResponseView::decode(&buf).unwrap();
        assert_eq!(v.status, 201);
        assert_eq!(v.body, b"ok");
        assert_eq!(v.headers.iter().next(), Some(("x", &b"y"[..])));
        assert!(ResponseView::decode(&buf[..buf.len() - 1]).is_err());
        let bad = encode_response(42, &[], b"");
        assert_eq!(ResponseView::decode(&bad), Err(DecodeError::Invalid("response status")));
    }
}
