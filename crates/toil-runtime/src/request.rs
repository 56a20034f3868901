//! The L1 request tier: a fresh, isolated instance per request.
//!
//! The host routes with the manifest first (404/405 cost no instance), then
//! instantiates the pre-linked module (a pooled slot with a copy-on-write
//! memory image), calls `handle`, decodes the reply and drops the instance.
//! Nothing outlives the request.

use bytes::Bytes;

use toil_abi::request::{encode_request, ResponseView};
use toil_abi::route::{RouteMatch, RouteTable};
use toil_abi::{exports, Tier};
use toil_metrics::Registry;
use wasmtime::{Store, TypedFunc};

use crate::admission::{Admission, Busy};
use crate::artifact::LoadError;
use crate::call::{Call, Site};
use crate::engine::{bounded, Loaded, Runtime};
use crate::fault::GuestFault;
use crate::host::HostState;
use crate::limits::Limits;
use crate::metrics::GuestMetrics;

/// A request as the edge hands it to the runtime.
#[derive(Debug)]
pub struct GuestRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub body: &'a [u8],
}

/// A response produced by a guest: the reply bytes it wrote, checked
/// (decodable, headers within the limits) and read in place, so the edge
/// builds its HTTP response from them with no copy in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestResponse {
    reply: Bytes,
}

impl GuestResponse {
    fn checked(reply: Vec<u8>, limits: &Limits) -> Result<Self, GuestFault> {
        let view = ResponseView::decode(&reply).map_err(|e| GuestFault::Abi(format!("undecodable response: {e}")))?;
        check_headers(&view, limits)?;
        Ok(GuestResponse { reply: Bytes::from(reply) })
    }

    /// The reply's status, headers and body.
    pub fn view(&self) -> ResponseView<'_> {
        ResponseView::decode(&self.reply).expect("checked when the guest replied")
    }

    pub fn status(&self) -> u16 {
        self.view().status
    }

    /// The body, sharing the reply's bytes.
    pub fn body(&self) -> Bytes {
        self.reply.slice_ref(self.view().body)
    }
}

/// What became of a request.
#[derive(Debug)]
pub enum Outcome {
    Response(GuestResponse),
    /// No route matches the path.
    NotFound,
    /// The path matches routes of other methods only.
    MethodNotAllowed {
        allow: Vec<String>,
    },
    /// The guest failed; the edge answers 500 or 503 and logs it.
    Fault(GuestFault),
    /// No instance for it now: the domain's share of the node is in use
    /// (and its queue full or too slow), or the node's pool is exhausted.
    /// The edge answers 503 with `Retry-After`; no guest code ran.
    Busy(Busy),
}

/// A domain's loaded request artifact.
pub struct RequestApp {
    runtime: Runtime,
    loaded: Loaded,
    routes: RouteTable,
    handle: wasmtime::ModuleExport,
    metrics: GuestMetrics,
    admission: Admission,
}

impl RequestApp {
    /// Validates, compiles and links `bytes` as `domain`'s request artifact.
    pub fn load(runtime: &Runtime, registry: &Registry, domain: &str, bytes: &[u8]) -> Result<Self, LoadError> {
        let loaded = runtime.load(domain, Tier::Request, bytes)?;
        let routes = RouteTable::new(loaded.info.manifest.routes.iter().map(|r| (r.method.as_str(), r.pattern.as_str())));
        let handle = loaded.export_index(exports::HANDLE).expect("inspect checked the export");
        // `instantiate_and_call` relies on this to skip the per-instance type check.
        let signature = loaded.pre.module().get_export(exports::HANDLE).and_then(|e| e.func().cloned());
        if !signature.is_some_and(|f| one_i32(f.params()) && one_i32(f.results())) {
            return Err(LoadError::Link(format!("`{}` must have the type (i32) -> i32", exports::HANDLE)));
        }
        let admission = Admission::new(runtime.config().admission);
        Ok(RequestApp { runtime: runtime.clone(), routes, handle, metrics: GuestMetrics::new(registry, domain, Tier::Request), loaded, admission })
    }

    pub fn domain(&self) -> &str {
        &self.loaded.id.domain
    }

    /// The declared routes, `(method, pattern)`.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.loaded.info.manifest.routes.iter().map(|r| (r.method.as_str(), r.pattern.as_str()))
    }

    /// Serves one request on a fresh instance, for at most the deadline.
    pub async fn handle(&self, req: &GuestRequest<'_>) -> Outcome {
        let (route_key, params) = match self.routes.lookup(req.method, req.path) {
            RouteMatch::Found { route, params, .. } => (route, params),
            RouteMatch::NotFound => return Outcome::NotFound,
            RouteMatch::MethodNotAllowed { allow } => return Outcome::MethodNotAllowed { allow: allow.into_iter().map(String::from).collect() },
        };
        let _admitted = match self.admission.enter().await {
            Ok(permit) => permit,
            Err(busy) => return self.busy(busy, req),
        };
        let input = encode_request(req.method, req.path, req.query, route_key, &params, req.headers.iter().copied(), req.body);
        let site = Site::Request { method: req.method, path: req.path, route: route_key };
        match self.call(input, &site).await {
            Ok(resp) => Outcome::Response(resp),
            // Not the guest's fault: no instance could be made for it.
            Err(GuestFault::NodeFull) => self.busy(Busy::NodeFull, req),
            Err(fault) => Outcome::Fault(fault),
        }
    }

    fn busy(&self, busy: Busy, req: &GuestRequest<'_>) -> Outcome {
        self.metrics.busy(&busy);
        tracing::debug!(domain = %self.domain(), tier = "request", method = req.method, path = req.path, "request refused: {busy}");
        Outcome::Busy(busy)
    }

    async fn call(&self, input: Vec<u8>, site: &Site<'_>) -> Result<GuestResponse, GuestFault> {
        // Declared before the store, so dropped after it (and its slot).
        let _share = self.runtime.instance_share()?;
        let mut store = self.runtime.store(&self.loaded.id);
        let _live = self.metrics.live_instance();
        let input_len = input.len() as i32;
        let call = Call::begin(&mut store, input);
        let result = bounded(call.until, self.instantiate_and_call(&call, &mut store, input_len)).await;
        call.end(&mut store, result.map(|rc| (rc, ())), site, &self.metrics, |store, ()| {
            GuestResponse::checked(std::mem::take(&mut store.data_mut().output), self.runtime.limits())
        })
    }

    async fn instantiate_and_call(&self, call: &Call, store: &mut Store<HostState>, input_len: i32) -> wasmtime::Result<i32> {
        let instance = self.loaded.instantiate(call, &mut *store).await?;
        let func = instance
            .get_module_export(&mut *store, &self.handle)
            .and_then(|e| e.into_func())
            .ok_or_else(|| wasmtime::format_err!("handle export vanished"))?;
        // SAFETY: `load` checked that `handle` is (i32) -> i32, which is what
        // `typed` would check again on every instance (half a microsecond).
        let handle = unsafe { TypedFunc::<i32, i32>::new_unchecked(&*store, func) };
        handle.call_async(&mut *store, input_len).await
    }
}

/// Refuses a response whose headers no client could take (and that would
/// overflow `http`'s header map, which panics past 32,768 entries).
fn check_headers(view: &ResponseView<'_>, limits: &Limits) -> Result<(), GuestFault> {
    let count = view.headers.len();
    if count > limits.max_response_headers {
        return Err(GuestFault::Abi(format!("response has {count} headers, over the limit of {}", limits.max_response_headers)));
    }
    let bytes: usize = view.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if bytes > limits.max_response_header_bytes {
        return Err(GuestFault::Abi(format!("response headers take {bytes} bytes, over the limit of {}", limits.max_response_header_bytes)));
    }
    Ok(())
}

fn one_i32(mut types: impl ExactSizeIterator<Item = wasmtime::ValType>) -> bool {
    types.len() == 1 && types.next().is_some_and(|t| t.is_i32())
}
