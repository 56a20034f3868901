//! Route patterns of the L1 tier: `/`, `/users/:id`, `/static/*rest`.
//!
//! A pattern is `/`-separated segments: a literal, a `:name` parameter that
//! captures one segment, or a final `*name` wildcard that captures the rest
//! of the path (possibly empty). The host matches requests against the
//! manifest's routes, so unknown paths get 404/405 without running guest code;
//! when several patterns match, the most specific wins (literal before
//! parameter before wildcard, segment by segment), whatever the declaration order.

#[cfg(feature = "alloc")]
use alloc::{string::String, vec::Vec};

/// HTTP methods a route may declare; `ANY` matches every method.
pub const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "ANY"];

/// Why a route pattern is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternError {
    MustStartWithSlash,
    EmptyParamName,
    InvalidParamName,
    WildcardNotLast,
    DuplicateParam,
}

impl core::fmt::Display for PatternError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PatternError::MustStartWithSlash => "pattern must start with '/'",
            PatternError::EmptyParamName => "parameter has no name after ':' or '*'",
            PatternError::InvalidParamName => "parameter names use only ASCII letters, digits and '_'",
            PatternError::WildcardNotLast => "a '*' wildcard must be the last segment",
            PatternError::DuplicateParam => "parameter name used twice",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SegmentKind {
    Literal = 0,
    Param = 1,
    Wildcard = 2,
}

fn segment_kind(seg: &str) -> (SegmentKind, &str) {
    if let Some(name) = seg.strip_prefix(':') {
        (SegmentKind::Param, name)
    } else if let Some(name) = seg.strip_prefix('*') {
        (SegmentKind::Wildcard, name)
    } else {
        (SegmentKind::Literal, seg)
    }
}

fn segments(path: &str) -> core::str::Split<'_, char> {
    // "/" has one empty segment; "/a/" is treated as "/a".
    let trimmed = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
    trimmed[1.min(trimmed.len())..].split('/')
}

/// Checks a pattern's syntax.
pub fn validate_pattern(pattern: &str) -> Result<(), PatternError> {
    if !pattern.starts_with('/') {
        return Err(PatternError::MustStartWithSlash);
    }
    let mut segs = segments(pattern).peekable();
    let mut seen: [&str; 16] = [""; 16];
    let mut n_seen = 0;
    while let Some(seg) = segs.next() {
        let (kind, name) = segment_kind(seg);
        if kind == SegmentKind::Literal {
            continue;
        }
        if name.is_empty() {
            return Err(PatternError::EmptyParamName);
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(PatternError::InvalidParamName);
        }
        if kind == SegmentKind::Wildcard && segs.peek().is_some() {
            return Err(PatternError::WildcardNotLast);
        }
        if seen[..n_seen].contains(&name) {
            return Err(PatternError::DuplicateParam);
        }
        if n_seen < seen.len() {
            seen[n_seen] = name;
            n_seen += 1;
        }
    }
    Ok(())
}

/// Matches `path` against a valid `pattern`, pushing percent-decoded
/// captures into `params`. Returns false (and leaves `params` as it found it)
/// when the path does not match.
#[cfg(feature = "alloc")]
pub fn match_path(pattern: &str, path: &str, params: &mut Vec<(String, String)>) -> bool {
    let start = params.len();
    let mut pat = segments(pattern);
    let mut rest = segments(path);
    let ok = loop {
        match (pat.next(), rest.next()) {
            (None, None) => break true,
            (Some(p), seg) => match segment_kind(p) {
                (SegmentKind::Literal, lit) => {
                    if seg != Some(lit) {
                        break false;
                    }
                }
                (SegmentKind::Param, name) => match seg {
                    Some(s) if !s.is_empty() => params.push((name.into(), percent_decode(s))),
                    _ => break false,
                },
                (SegmentKind::Wildcard, name) => {
                    let mut tail = String::new();
                    if let Some(s) = seg {
                        tail.push_str(s);
                        for s in rest.by_ref() {
                            tail.push('/');
                            tail.push_str(s);
                        }
                    }
                    params.push((name.into(), percent_decode(&tail)));
                    break true;
                }
            },
            (None, Some(_)) => break false,
        }
    };
    if !ok {
        params.truncate(start);
    }
    ok
}

/// Decodes `%XX` escapes; invalid escapes and non-UTF-8 results are kept
/// literally / lossily rather than rejected, as most routers do.
#[cfg(feature = "alloc")]
pub fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.into();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(feature = "alloc")]
fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The outcome of looking a request up in a [`RouteTable`].
#[cfg(feature = "alloc")]
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch<'t> {
    Found {
        /// `"<declared method> <pattern>"`, the route key the guest dispatches on.
        route: &'t str,
        params: Vec<(String, String)>,
    },
    /// The path matches, but not with this method; `allow` lists the methods that would.
    MethodNotAllowed {
        allow: Vec<&'t str>,
    },
    NotFound,
}

/// Routes ordered by specificity, built once per artifact.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

#[cfg(feature = "alloc")]
#[derive(Clone, Debug)]
struct Route {
    /// `"<method> <pattern>"`: built once, so a request formats nothing.
    key: String,
    method_len: usize,
    specificity: Vec<SegmentKind>,
}

#[cfg(feature = "alloc")]
impl Route {
    fn method(&self) -> &str {
        &self.key[..self.method_len]
    }

    fn pattern(&self) -> &str {
        &self.key[self.method_len + 1..]
    }

    fn found(&self, params: Vec<(String, String)>) -> RouteMatch<'_> {
        RouteMatch::Found { route: &self.key, params }
    }
}

#[cfg(feature = "alloc")]
impl RouteTable {
    /// Builds a table from `(method, pattern)` pairs that were already validated.
    pub fn new<'a>(decls: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut routes: Vec<_> = decls
            .into_iter()
            .map(|(m, p)| Route {
                key: alloc::format!("{m} {p}"),
                method_len: m.len(),
                specificity: segments(p).map(|s| segment_kind(s).0).collect(),
            })
            .collect();
        routes.sort_by(|a, b| a.specificity.cmp(&b.specificity));
        RouteTable { routes }
    }

    /// Looks a request up. A route declared for exactly `method` beats an
    /// `ANY` route or a `GET` route answering `HEAD` at the same specificity.
    pub fn lookup(&self, method: &str, path: &str) -> RouteMatch<'_> {
        let mut params = Vec::new();
        let mut allow = Vec::new();
        let mut fallback = None;
        for route in &self.routes {
            if !match_path(route.pattern(), path, &mut params) {
                continue;
            }
            let m = route.method();
            if m == method {
                return route.found(params);
            }
            if fallback.is_none() && (m == "ANY" || (method == "HEAD" && m == "GET")) {
                fallback = Some(route.found(core::mem::take(&mut params)));
            }
            params.clear();
            if !allow.contains(&m) {
                allow.push(m);
            }
        }
        match fallback {
            Some(found) => found,
            None if allow.is_empty() => RouteMatch::NotFound,
            None => RouteMatch::MethodNotAllowed { allow },
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::{borrow::ToOwned, vec};

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn pattern_validation() {
        for ok in ["/", "/a", "/users/:id", "/files/*rest", "/a/:x/b/:y"] {
            assert_eq!(validate_pattern(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_pattern("a"), Err(PatternError::MustStartWithSlash));
        assert_eq!(validate_pattern("/:"), Err(PatternError::EmptyParamName));
        assert_eq!(validate_pattern("/:a-b"), Err(PatternError::InvalidParamName));
        assert_eq!(validate_pattern("/*a/b"), Err(PatternError::WildcardNotLast));
        assert_eq!(validate_pattern("/:a/:a"), Err(PatternError::DuplicateParam));
    }

    #[test]
    fn matching_and_captures() {
        let mut v = Vec::new();
        assert!(match_path("/", "/", &mut v));
        assert!(match_path("/users/:id", "/users/a%20b", &mut v));
        assert_eq!(v, p(&[("id", "a b")]));
        v.clear();
        assert!(match_path("/users/:id", "/users/7/", &mut v));
        v.clear();
        assert!(!match_path("/users/:id", "/users/", &mut v));
        assert!(!match_path("/users/:id", "/users/7/x", &mut v));
        assert!(v.is_empty());
        assert!(match_path("/f/*rest", "/f/a/b/c", &mut v));
        assert_eq!(v, p(&[("rest", "a/b/c")]));
        v.clear();
        assert!(match_path("/f/*rest", "/f", &mut v));
        assert_eq!(v, p(&[("rest", "")]));
    }

    #[test]
    fn table_prefers_specific_and_reports_405() {
        let t = RouteTable::new(vec![("GET", "/users/:id"), ("GET", "/users/me"), ("POST", "/echo"), ("GET", "/*any")]);
        assert_eq!(t.lookup("GET", "/users/me"), RouteMatch::Found { route: "GET /users/me", params: vec![] });
        assert_eq!(t.lookup("GET", "/users/5"), RouteMatch::Found { route: "GET /users/:id", params: p(&[("id", "5")]) });
        assert_eq!(t.lookup("HEAD", "/users/5"), RouteMatch::Found { route: "GET /users/:id", params: p(&[("id", "5")]) });
        assert_eq!(t.lookup("GET", "/echo"), RouteMatch::Found { route: "GET /*any", params: p(&[("any", "echo")]) });
        let t = RouteTable::new(vec![("POST", "/echo"), ("PUT", "/echo")]);
        assert_eq!(t.lookup("GET", "/echo"), RouteMatch::MethodNotAllowed { allow: vec!["POST", "PUT"] });
        assert_eq!(t.lookup("GET", "/nope"), RouteMatch::NotFound);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}

impl core::error::Error for PatternError {}
