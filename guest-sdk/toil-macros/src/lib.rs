//! Procedural macros of the Toil guest SDK (re-exported by the `toil` crate).
//!
//! Each surface macro does two things for its impl block:
//! 1. implements the SDK trait that dispatches events to the annotated
//!    methods ([`macro@rest`] → `toil::http::Rest`, [`macro@stream`] →
//!    `toil::stream::Stream`, [`macro@daemon`] → `toil::daemon::Daemon`);
//! 2. emits the manifest records of its declarations into the
//!    `toil.manifest` custom section, gated on `cfg(toil_tier = ...)` so
//!    each tier's artifact describes only that tier.
//!
//! [`export!`] then emits the tier entry points, one tier per build pass:
//! `toil build` compiles the crate once per tier with `--cfg toil_tier="…"`,
//! so `release.wasm` holds only `handle`, `release-stream.wasm` only
//! `stream_dispatch`, and `release-cold.wasm` only the daemon entry points.
//! Route patterns are validated here, at compile time.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Error, Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Token, Type};

/// The `#[link_section]` static that carries `bytes` for one tier.
fn manifest_static(tier: &str, name: &Ident, bytes: &[u8]) -> TokenStream2 {
    let len = bytes.len();
    quote! {
        #[cfg(toil_tier = #tier)]
        #[doc(hidden)]
        #[used]
        #[link_section = "toil.manifest"]
        static #name: [u8; #len] = [#(#bytes),*];
    }
}

fn self_ident(item: &ItemImpl) -> syn::Result<Ident> {
    match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => Ok(p.path.segments.last().expect("path has a segment").ident.clone()),
        other => Err(Error::new(other.span(), "toil surface macros go on `impl TypeName { ... }`")),
    }
}

/// Removes and returns the SDK helper attributes (`#[get(..)]`, `#[message]`, ...) of a method.
fn take_attrs(f: &mut ImplItemFn, names: &[&str]) -> Vec<Attribute> {
    let (ours, rest): (Vec<_>, Vec<_>) =
        f.attrs.drain(..).partition(|a| names.iter().any(|n| a.path().is_ident(n)));
    f.attrs = rest;
    ours
}

fn methods(item: &mut ItemImpl) -> impl Iterator<Item = &mut ImplItemFn> {
    item.items.iter_mut().filter_map(|i| match i {
        ImplItem::Fn(f) => Some(f),
        _ => None,
    })
}

// ---------------------------------------------------------------- #[rest]

const ROUTE_ATTRS: [&str; 8] = ["get", "head", "post", "put", "patch", "delete", "options", "any"];

/// Declares L1 request handlers: `#[get("/users/:id")]`, `#[post(..)]`,
/// `#[put]`, `#[patch]`, `#[delete]`, `#[head]`, `#[options]`, `#[any]` on
/// associated functions taking `&Request` (or nothing) and returning
/// `impl IntoResponse`.
#[proc_macro_attribute]
pub fn rest(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, expand_rest)
}

fn expand(
    attr: TokenStream,
    item: TokenStream,
    f: fn(TokenStream2, ItemImpl) -> syn::Result<TokenStream2>,
) -> TokenStream {
    let parsed = syn::parse::<ItemImpl>(item);
    match parsed.and_then(|i| f(attr.into(), i)) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_rest(attr: TokenStream2, mut item: ItemImpl) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(Error::new(attr.span(), "#[rest] takes no arguments"));
    }
    let ty = self_ident(&item)?;
    let mut arms = Vec::new();
    let mut manifest = Vec::new();
    let mut seen = Vec::new();
    for f in methods(&mut item) {
        for a in take_attrs(f, &ROUTE_ATTRS) {
            let method = a.path().get_ident().expect("ident").to_string().to_uppercase();
            let pattern: LitStr = a.parse_args()?;
            let p = pattern.value();
            if let Err(e) = toil_abi::route::validate_pattern(&p) {
                return Err(Error::new(pattern.span(), format!("invalid route pattern {p:?}: {e}")));
            }
            let key = format!("{method} {p}");
            if seen.contains(&key) {
                return Err(Error::new(pattern.span(), format!("route {key} is declared twice")));
            }
            toil_abi::manifest::encode_route(&mut manifest, &method, &p);
            let name = &f.sig.ident;
            let call = if f.sig.inputs.is_empty() { quote!(Self::#name()) } else { quote!(Self::#name(req)) };
            arms.push(quote! { #key => ::core::option::Option::Some(::toil::http::IntoResponse::into_response(#call)), });
            seen.push(key);
        }
    }
    if arms.is_empty() {
        return Err(Error::new(Span::call_site(), "#[rest] impl declares no routes (add #[get(\"/\")] etc.)"));
    }
    let static_name = format_ident!("__TOIL_MANIFEST_ROUTES_{}", ty.to_string().to_uppercase());
    let section = manifest_static("request", &static_name, &manifest);
    let self_ty = &item.self_ty;
    Ok(quote! {
        #item
        impl ::toil::http::Rest for #self_ty {
            fn dispatch(req: &::toil::http::Request<'_>) -> ::core::option::Option<::toil::http::Response> {
                match req.route_key() {
                    #(#arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }
        #section
    })
}

// ---------------------------------------------------------------- #[stream]

/// Declares an L2/L3 stream mounted at `/<name>`: `#[stream("echo")]` on an
/// impl of a `Default` type whose methods carry the lifecycle hooks
/// `#[connect]`, `#[message]`, `#[close]`, `#[disconnect]`, `#[channel]`.
/// Every hook is optional. One resident value of the type lives for the
/// whole connection, so its fields persist across events.
#[proc_macro_attribute]
pub fn stream(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, expand_stream)
}

const HOOKS: [&str; 5] = ["connect", "message", "close", "disconnect", "channel"];

fn expand_stream(attr: TokenStream2, mut item: ItemImpl) -> syn::Result<TokenStream2> {
    let name: LitStr = syn::parse2(attr).map_err(|e| Error::new(e.span(), "expected #[stream(\"name\")]"))?;
    let stream_name = name.value();
    if stream_name.is_empty() || !stream_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(Error::new(name.span(), "stream names use ASCII letters, digits, '-', '_' and '.'"));
    }
    let ty = self_ident(&item)?;
    let mut hooks: Vec<(String, Ident)> = Vec::new();
    for f in methods(&mut item) {
        for a in take_attrs(f, &HOOKS) {
            let hook = a.path().get_ident().expect("ident").to_string();
            if hooks.iter().any(|(h, _)| *h == hook) {
                return Err(Error::new(a.span(), format!("#[{hook}] is declared twice")));
            }
            hooks.push((hook, f.sig.ident.clone()));
        }
    }
    let call = |hook: &str, args: TokenStream2| -> TokenStream2 {
        match hooks.iter().find(|(h, _)| h == hook) {
            Some((_, m)) => quote!(self.#m(cx, #args)),
            None => quote!({ let _ = (cx, #args); }),
        }
    };
    // Hooks without payload arguments are called as `(cx)` only.
    let connect = match hooks.iter().find(|(h, _)| h == "connect") {
        Some((_, m)) => quote!(self.#m(cx)),
        None => quote!({ let _ = cx; }),
    };
    let message = call("message", quote!(frame));
    let close = call("close", quote!(code, reason));
    let disconnect = call("disconnect", quote!(reason));
    let channel = call("channel", quote!(channel, bytes));
    let mut manifest = Vec::new();
    toil_abi::manifest::encode_stream(&mut manifest, &stream_name);
    let static_name = format_ident!("__TOIL_MANIFEST_STREAM_{}", ty.to_string().to_uppercase());
    let section = manifest_static("stream", &static_name, &manifest);
    let self_ty = &item.self_ty;
    Ok(quote! {
        #item
        impl ::toil::stream::Stream for #self_ty {
            const NAME: &'static str = #stream_name;
            fn on_connect(&mut self, cx: &mut ::toil::stream::Session) { #connect }
            fn on_message(&mut self, cx: &mut ::toil::stream::Session, frame: ::toil::stream::Frame<'_>) { #message }
            fn on_close(&mut self, cx: &mut ::toil::stream::Session, code: u32, reason: &str) { #close }
            fn on_disconnect(&mut self, cx: &mut ::toil::stream::Session, reason: &str) { #disconnect }
            fn on_channel(&mut self, cx: &mut ::toil::stream::Session, channel: &str, bytes: &[u8]) { #channel }
        }
        #section
    })
}

// ---------------------------------------------------------------- #[daemon]

/// Declares the L4 daemon of the domain on an impl of a `Default` type:
/// `#[start]` runs when this box becomes the domain's owner; each
/// `#[scheduled("5s")]` (an interval) or `#[scheduled("0 */5 * * * *")]`
/// (a cron expression, 5 to 7 fields, UTC) method runs once per tick and
/// takes `&mut self, &toil::daemon::Tick`.
#[proc_macro_attribute]
pub fn daemon(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, expand_daemon)
}

fn expand_daemon(attr: TokenStream2, mut item: ItemImpl) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(Error::new(attr.span(), "#[daemon] takes no arguments"));
    }
    let mut start = None;
    let mut tasks: Vec<(String, String, Ident)> = Vec::new();
    for f in methods(&mut item) {
        for a in take_attrs(f, &["start", "scheduled"]) {
            if a.path().is_ident("start") {
                if start.replace(f.sig.ident.clone()).is_some() {
                    return Err(Error::new(a.span(), "#[start] is declared twice"));
                }
            } else {
                let sched: LitStr = a.parse_args()?;
                if sched.value().trim().is_empty() {
                    return Err(Error::new(sched.span(), "empty schedule"));
                }
                tasks.push((f.sig.ident.to_string(), sched.value(), f.sig.ident.clone()));
            }
        }
    }
    if tasks.is_empty() {
        return Err(Error::new(Span::call_site(), "#[daemon] impl declares no #[scheduled(..)] task"));
    }
    let mut manifest = Vec::new();
    let mut arms = Vec::new();
    for (i, (name, schedule, method)) in tasks.iter().enumerate() {
        toil_abi::manifest::encode_task(&mut manifest, i as u32, name, schedule);
        let idx = i as u32;
        arms.push(quote! { #idx => { self.#method(tick); true } });
    }
    let names: Vec<&str> = tasks.iter().map(|t| t.0.as_str()).collect();
    let start_call = match start {
        Some(m) => quote!(self.#m(info)),
        None => quote!({ let _ = info; }),
    };
    let ty = self_ident(&item)?;
    let static_name = format_ident!("__TOIL_MANIFEST_DAEMON_{}", ty.to_string().to_uppercase());
    let section = manifest_static("daemon", &static_name, &manifest);
    let self_ty = &item.self_ty;
    Ok(quote! {
        #item
        impl ::toil::daemon::Daemon for #self_ty {
            const TASKS: &'static [&'static str] = &[#(#names),*];
            fn on_start(&mut self, info: &::toil::daemon::StartInfo<'_>) { #start_call }
            fn on_tick(&mut self, task: u32, tick: &::toil::daemon::Tick) -> bool {
                match task {
                    #(#arms)*
                    _ => false,
                }
            }
        }
        #section
    })
}

// ---------------------------------------------------------------- export!

struct ExportArgs {
    rest: Vec<Type>,
    streams: Vec<Type>,
    daemon: Option<Type>,
}

impl Parse for ExportArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = ExportArgs { rest: vec![], streams: vec![], daemon: None };
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            input.parse::<Token![:]>()?;
            let list = |input: ParseStream| -> syn::Result<Vec<Type>> {
                if input.peek(syn::token::Bracket) {
                    let content;
                    syn::bracketed!(content in input);
                    Ok(Punctuated::<Type, Token![,]>::parse_terminated(&content)?.into_iter().collect())
                } else {
                    Ok(vec![input.parse()?])
                }
            };
            match key.to_string().as_str() {
                "rest" => args.rest.extend(list(input)?),
                "streams" | "stream" => args.streams.extend(list(input)?),
                "daemon" => {
                    let t: Type = input.parse()?;
                    if args.daemon.replace(t).is_some() {
                        return Err(Error::new(key.span(), "a domain has one daemon"));
                    }
                }
                other => {
                    return Err(Error::new(key.span(), format!("unknown key `{other}` (expected rest, streams, daemon)")))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

/// Emits the tier entry points and manifest header of the crate:
/// `toil::export! { rest: [Api], streams: [Echo, Chat], daemon: Jobs }`.
/// Every key is optional; use it once per crate, at the root.
#[proc_macro]
pub fn export(input: TokenStream) -> TokenStream {
    let args = match syn::parse::<ExportArgs>(input) {
        Ok(a) => a,
        Err(e) => return e.to_compile_error().into(),
    };
    let mut out = TokenStream2::new();
    // Every tier's dispatch is referenced in every pass (and when no tier is
    // set, as in `cargo check`), so each pass sees the same code as used and
    // dead-code warnings mean what they say. Unexported, it is never linked in.
    let (rest, streams) = (&args.rest, &args.streams);
    let daemon_refs = args.daemon.iter().map(|d| {
        quote! {
            let _ = ::toil::__private::daemon_start::<#d> as fn(i32) -> i32;
            let _ = ::toil::__private::scheduled_tick::<#d> as fn(i32, i64) -> i32;
        }
    });
    out.extend(quote! {
        #[doc(hidden)]
        const _: () = {
            #( let _ = <#rest as ::toil::http::Rest>::dispatch
                as fn(&::toil::http::Request<'_>) -> ::core::option::Option<::toil::http::Response>; )*
            #( let _ = ::toil::__private::open_stream::<#streams> as fn() -> bool; )*
            #( #daemon_refs )*
        };
    });
    let header = |tier: &str, variant: TokenStream2| {
        quote! {
            #[cfg(toil_tier = #tier)]
            #[doc(hidden)]
            #[used]
            #[link_section = "toil.manifest"]
            static __TOIL_MANIFEST_HEADER: [u8; ::toil::abi::manifest::HEADER_LEN] =
                ::toil::abi::manifest::header_record(::toil::abi::Tier::#variant);
        }
    };
    if !args.rest.is_empty() {
        let rest = &args.rest;
        out.extend(header("request", quote!(Request)));
        out.extend(quote! {
            #[cfg(toil_tier = "request")]
            #[no_mangle]
            pub extern "C" fn handle(input_len: i32) -> i32 {
                ::toil::__private::handle(input_len, |req| {
                    #(
                        if let ::core::option::Option::Some(r) = <#rest as ::toil::http::Rest>::dispatch(req) {
                            return ::core::option::Option::Some(r);
                        }
                    )*
                    ::core::option::Option::None
                })
            }
        });
    }
    if !args.streams.is_empty() {
        let streams = &args.streams;
        out.extend(header("stream", quote!(Stream)));
        out.extend(quote! {
            #[cfg(toil_tier = "stream")]
            #[no_mangle]
            pub extern "C" fn stream_dispatch(event: i32, input_len: i32) -> i32 {
                ::toil::__private::stream_dispatch(event, input_len, |name| {
                    #(
                        if name == <#streams as ::toil::stream::Stream>::NAME {
                            return ::toil::__private::open_stream::<#streams>();
                        }
                    )*
                    false
                })
            }
        });
    }
    if let Some(d) = &args.daemon {
        out.extend(header("daemon", quote!(Daemon)));
        out.extend(quote! {
            #[cfg(toil_tier = "daemon")]
            #[no_mangle]
            pub extern "C" fn daemon_start(input_len: i32) -> i32 {
                ::toil::__private::daemon_start::<#d>(input_len)
            }
            #[cfg(toil_tier = "daemon")]
            #[no_mangle]
            pub extern "C" fn scheduled_tick(task: i32, fire_time_ms: i64) -> i32 {
                ::toil::__private::scheduled_tick::<#d>(task, fire_time_ms)
            }
        });
    }
    out.into()
}
