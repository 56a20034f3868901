//! Procedural macros of the Toil guest SDK (re-exported by the `toil` crate).
//!
//! The tier vocabulary is `request`, `stream`, `daemon`. Each surface macro
//! implements, for its impl block, the SDK trait that describes and
//! dispatches its declarations: [`macro@request`] (alias [`macro@rest`]) →
//! `toil::http::Rest` with the routes in `ROUTES`, [`macro@stream`] →
//! `toil::stream::Stream` with the name in `NAME`, [`macro@daemon`] →
//! `toil::daemon::Daemon` with the tasks in `TASKS`. None of them writes
//! the manifest.
//!
//! [`export!`] is the one source of truth: for the types it lists, and only
//! those, it emits each tier's manifest (the `toil.manifest` custom section,
//! assembled at compile time from those constants) and its entry points,
//! one tier per build pass: `toil build` compiles the crate once per tier
//! with `--cfg toil_tier="…"`, so `release.wasm` holds only `handle`,
//! `release-stream.wasm` only `stream_dispatch`, and `release-cold.wasm`
//! only the daemon entry points.
//!
//! Route patterns, stream names, schedules and the signatures of handlers,
//! hooks and tasks are checked here, at compile time, with errors pointing
//! at the offending tokens.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Error, FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Meta, Token, Type};

/// The method attributes of each surface, to refuse one used in another's impl.
const ROUTE_ATTRS: [&str; 8] = ["get", "head", "post", "put", "patch", "delete", "options", "any"];
const HOOK_ATTRS: [&str; 6] = ["connect", "message", "close", "disconnect", "channel", "stream_end"];
const DAEMON_ATTRS: [&str; 2] = ["start", "scheduled"];

fn check_self_type(item: &ItemImpl, surface: &str) -> syn::Result<()> {
    match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() && item.trait_.is_none() => Ok(()),
        _ => Err(Error::new(item.self_ty.span(), format!("#[toil::{surface}] goes on an inherent `impl TypeName {{ ... }}` block"))),
    }
}

/// Removes and returns the SDK helper attributes (`#[get(..)]`, `#[message]`, ...) of a method.
fn take_attrs(f: &mut ImplItemFn, names: &[&str]) -> Vec<Attribute> {
    let (ours, rest): (Vec<_>, Vec<_>) = f.attrs.drain(..).partition(|a| names.iter().any(|n| a.path().is_ident(n)));
    f.attrs = rest;
    ours
}

/// Refuses a helper attribute of another surface left on a method.
fn refuse_foreign_attrs(f: &ImplItemFn, surface: &str) -> syn::Result<()> {
    let owners = [("request", &ROUTE_ATTRS[..]), ("stream", &HOOK_ATTRS[..]), ("daemon", &DAEMON_ATTRS[..])];
    for a in &f.attrs {
        for (owner, names) in owners {
            if let Some(name) = names.iter().find(|n| a.path().is_ident(n)) {
                return Err(Error::new(a.meta.span(), format!("#[{name}] belongs in a #[toil::{owner}] impl, not in a #[toil::{surface}] one")));
            }
        }
    }
    Ok(())
}

fn no_arguments(a: &Attribute) -> syn::Result<()> {
    match &a.meta {
        Meta::Path(_) => Ok(()),
        other => Err(Error::new(other.span(), format!("#[{}] takes no arguments", other.path().get_ident().expect("ident")))),
    }
}

fn methods(item: &mut ItemImpl) -> impl Iterator<Item = &mut ImplItemFn> {
    item.items.iter_mut().filter_map(|i| match i {
        ImplItem::Fn(f) => Some(f),
        _ => None,
    })
}

/// How a handler, hook or task is called: its optional context argument (the
/// request, the session, the start info or the tick) and its payload.
struct Call<'a> {
    /// What is called, for messages: `#[message] hook`.
    what: String,
    /// The context argument as written in a signature (`cx: &mut Session`).
    context: &'a str,
    context_expr: TokenStream2,
    /// The payload as written in a signature, and the expressions passed.
    payload: &'a [&'a str],
    payload_exprs: Vec<TokenStream2>,
}

impl<'a> Call<'a> {
    /// A call whose only argument is its optional context.
    fn context_only(what: &str, context: &'a str, context_expr: TokenStream2) -> Self {
        Call { what: what.into(), context, context_expr, payload: &[], payload_exprs: vec![] }
    }

    /// The arguments `f` takes: the context (if declared) and the payload.
    /// `with_self`: whether `f` is a method (hooks, tasks) or an associated
    /// function (request handlers).
    fn args(&self, f: &ImplItemFn, with_self: bool) -> syn::Result<Vec<TokenStream2>> {
        let sig = &f.sig;
        let mut forms = String::from(if with_self { "&mut self, " } else { "" });
        forms.push('[');
        forms.push_str(self.context);
        forms.push(']');
        for p in self.payload {
            forms.push_str(", ");
            forms.push_str(p);
        }
        let expected = format!("a {} takes `({forms})`, the bracketed argument being optional", self.what);
        if let Some(a) = &sig.asyncness {
            return Err(Error::new(a.span(), format!("a {} is synchronous: remove `async`", self.what)));
        }
        let receiver = usize::from(matches!(sig.inputs.first(), Some(FnArg::Receiver(_))));
        let typed = match sig.inputs.first() {
            Some(FnArg::Receiver(r)) if !with_self => {
                return Err(Error::new(r.span(), format!("a {} is an associated function: remove `self`", self.what)));
            }
            Some(FnArg::Receiver(r)) if r.reference.is_none() => {
                return Err(Error::new(r.span(), format!("{expected}: it borrows `self`, it does not take it")));
            }
            Some(FnArg::Receiver(_)) => sig.inputs.len() - 1,
            _ if with_self => return Err(Error::new(sig.ident.span(), format!("{expected}: it is missing `&mut self`"))),
            _ => sig.inputs.len(),
        };
        if typed == self.payload.len() + 1 {
            Ok(std::iter::once(self.context_expr.clone()).chain(self.payload_exprs.iter().cloned()).collect())
        } else if typed == self.payload.len() {
            Ok(self.payload_exprs.clone())
        } else {
            // Point at the first argument too many, or at the name when some are missing.
            let span = sig.inputs.iter().nth(receiver + self.payload.len() + 1).map_or(sig.ident.span(), |a| a.span());
            let besides = if with_self { " besides `self`" } else { "" };
            Err(Error::new(span, format!("{expected}; this one takes {typed} argument(s){besides}")))
        }
    }

    /// `self.m(args)` made into a `Result<(), String>` by `toil::HookResult`;
    /// a return type that is not one is reported at the method's signature.
    fn hook(&self, f: &ImplItemFn) -> syn::Result<TokenStream2> {
        let args = self.args(f, true)?;
        let m = &f.sig.ident;
        let span = match &f.sig.output {
            syn::ReturnType::Type(_, ty) => ty.span(),
            syn::ReturnType::Default => m.span(),
        };
        Ok(quote_spanned! {span=> ::toil::HookResult::into_outcome(self.#m(#(#args),*)) })
    }
}

fn expand(attr: TokenStream, item: TokenStream, surface: &str, f: fn(TokenStream2, ItemImpl, &str) -> syn::Result<TokenStream2>) -> TokenStream {
    let item = match syn::parse::<ItemImpl>(item) {
        Ok(item) => item,
        Err(e) => {
            let e = Error::new(e.span(), format!("#[toil::{surface}] goes on an inherent `impl TypeName {{ ... }}` block ({e})"));
            return e.to_compile_error().into();
        }
    };
    match f(attr.into(), item.clone(), surface) {
        Ok(ts) => ts.into(),
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(stand_in(item, surface));
            out.into()
        }
    }
}

/// What a surface macro emits besides its error: the impl without the SDK's
/// attributes, and an empty implementation of the surface's trait, so the
/// error is the only one (`export!` still finds the trait).
fn stand_in(mut item: ItemImpl, surface: &str) -> TokenStream2 {
    for f in methods(&mut item) {
        take_attrs(f, &[&ROUTE_ATTRS[..], &HOOK_ATTRS[..], &DAEMON_ATTRS[..]].concat());
    }
    let (generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let imp = match surface {
        "stream" => quote! {
            impl #generics ::toil::stream::Stream for #self_ty #where_clause {
                const NAME: &'static str = "";
            }
        },
        "daemon" => quote! {
            impl #generics ::toil::daemon::Daemon for #self_ty #where_clause {
                const TASKS: &'static [(&'static str, &'static str)] = &[];
                fn on_tick(&mut self, _: u32, _: &::toil::daemon::Tick) -> ::core::option::Option<::core::result::Result<(), ::std::string::String>> {
                    ::core::option::Option::None
                }
            }
        },
        _ => quote! {
            impl #generics ::toil::http::Rest for #self_ty #where_clause {
                const ROUTES: &'static [(&'static str, &'static str)] = &[];
                fn dispatch(_: &::toil::http::Request<'_>) -> ::core::option::Option<::toil::http::Response> {
                    ::core::option::Option::None
                }
            }
        },
    };
    quote!(#item #imp)
}

// ---------------------------------------------------------------- #[request]

/// Declares L1 request handlers: `#[get("/users/:id")]`, `#[post(..)]`,
/// `#[put]`, `#[patch]`, `#[delete]`, `#[head]`, `#[options]`, `#[any]` on
/// associated functions taking `&Request` (or nothing) and returning
/// `impl IntoResponse`. Patterns are checked here; the routes reach the
/// manifest when `toil::export! { request: [..] }` lists the type.
#[proc_macro_attribute]
pub fn request(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, "request", expand_request)
}

/// Alias of [`macro@request`], the name it had first.
#[proc_macro_attribute]
pub fn rest(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, "rest", expand_request)
}

fn expand_request(attr: TokenStream2, mut item: ItemImpl, surface: &str) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(Error::new(attr.span(), format!("#[toil::{surface}] takes no arguments")));
    }
    check_self_type(&item, surface)?;
    let mut arms = Vec::new();
    let mut routes = Vec::new();
    let mut seen = Vec::new();
    for f in methods(&mut item) {
        for a in take_attrs(f, &ROUTE_ATTRS) {
            let method = a.path().get_ident().expect("ident").to_string();
            let pattern: LitStr = a.parse_args().map_err(|e| Error::new(e.span(), format!("expected #[{method}(\"/path\")]")))?;
            let method = method.to_uppercase();
            let p = pattern.value();
            if let Err(e) = toil_abi::route::validate_pattern(&p) {
                return Err(Error::new(pattern.span(), format!("invalid route pattern {p:?}: {e}")));
            }
            let key = format!("{method} {p}");
            if seen.contains(&key) {
                return Err(Error::new(pattern.span(), format!("route {key} is declared twice")));
            }
            let args = Call::context_only("request handler", "req: &Request", quote!(req)).args(f, false)?;
            let name = &f.sig.ident;
            arms.push(quote! { #key => ::core::option::Option::Some(::toil::http::IntoResponse::into_response(Self::#name(#(#args),*))), });
            routes.push(quote!((#method, #p)));
            seen.push(key);
        }
        refuse_foreign_attrs(f, surface)?;
    }
    if arms.is_empty() {
        return Err(Error::new(Span::call_site(), format!("#[toil::{surface}] impl declares no routes (add #[get(\"/\")] etc.)")));
    }
    let (generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    Ok(quote! {
        #item
        impl #generics ::toil::http::Rest for #self_ty #where_clause {
            const ROUTES: &'static [(&'static str, &'static str)] = &[#(#routes),*];
            fn dispatch(req: &::toil::http::Request<'_>) -> ::core::option::Option<::toil::http::Response> {
                match req.route_key() {
                    #(#arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    })
}

// ---------------------------------------------------------------- #[stream]

/// Declares an L2/L3 stream mounted at `/<name>`: `#[stream("echo")]` on an
/// impl of a `Default` type whose methods carry the lifecycle hooks
/// `#[connect]`, `#[message]`, `#[close]`, `#[disconnect]`, `#[channel]`,
/// `#[stream_end]`.
/// Every hook is optional, may leave out its `cx: &mut Session` argument,
/// and returns `()` or `Result<(), E>` with `E: Display` (an `Err` is
/// reported to the host log; the session goes on). One resident value of
/// the type lives for the whole connection, so its fields persist across
/// events. The stream reaches the manifest when
/// `toil::export! { stream: [..] }` lists the type.
#[proc_macro_attribute]
pub fn stream(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, "stream", expand_stream)
}

/// The same rule as the host's loader: one URL path segment of unreserved characters.
fn validate_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a stream name is 1 to 64 characters".into());
    }
    if name == "." || name == ".." {
        return Err("a stream name cannot be a relative path segment".into());
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) {
        return Err("stream names use ASCII letters, digits, '-', '_', '.' and '~' (the name is one URL path segment)".into());
    }
    Ok(())
}

fn expand_stream(attr: TokenStream2, mut item: ItemImpl, surface: &str) -> syn::Result<TokenStream2> {
    let name: LitStr = syn::parse2(attr).map_err(|e| Error::new(e.span(), "expected #[toil::stream(\"name\")]"))?;
    let stream_name = name.value();
    validate_stream_name(&stream_name).map_err(|e| Error::new(name.span(), e))?;
    check_self_type(&item, surface)?;
    let mut hooks: Vec<(String, TokenStream2)> = Vec::new();
    for f in methods(&mut item) {
        for a in take_attrs(f, &HOOK_ATTRS) {
            let hook = a.path().get_ident().expect("ident").to_string();
            no_arguments(&a)?;
            if hooks.iter().any(|(h, _)| *h == hook) {
                return Err(Error::new(a.meta.span(), format!("#[{hook}] is declared twice")));
            }
            let (payload, payload_exprs): (&[&str], _) = match hook.as_str() {
                "connect" => (&[], vec![]),
                "message" => (&["frame: Frame<'_>"], vec![quote!(frame)]),
                "close" => (&["code: u32", "reason: &str"], vec![quote!(code), quote!(reason)]),
                "disconnect" => (&["reason: &str"], vec![quote!(reason)]),
                "stream_end" => (&["stream: StreamId", "end: StreamEnd"], vec![quote!(stream), quote!(end)]),
                _ => (&["event: ChannelEvent<'_>"], vec![quote!(event)]),
            };
            let call = Call { what: format!("#[{hook}] hook"), context: "cx: &mut Session", context_expr: quote!(cx), payload, payload_exprs };
            hooks.push((hook, call.hook(f)?));
        }
        refuse_foreign_attrs(f, surface)?;
    }
    let method = |hook: &str, params: TokenStream2| -> TokenStream2 {
        let Some((_, body)) = hooks.iter().find(|(h, _)| h == hook) else {
            return TokenStream2::new();
        };
        let name = Ident::new(&format!("on_{hook}"), Span::call_site());
        quote! {
            fn #name(&mut self, cx: &mut ::toil::stream::Session, #params) -> ::core::result::Result<(), ::std::string::String> {
                #body
            }
        }
    };
    let connect = method("connect", quote!());
    let message = method("message", quote!(frame: ::toil::stream::Frame<'_>));
    let close = method("close", quote!(code: u32, reason: &str));
    let disconnect = method("disconnect", quote!(reason: &str));
    let channel = method("channel", quote!(event: ::toil::channel::ChannelEvent<'_>));
    let stream_end = method("stream_end", quote!(stream: ::toil::stream::StreamId, end: ::toil::stream::StreamEnd));
    let (generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    Ok(quote! {
        #item
        impl #generics ::toil::stream::Stream for #self_ty #where_clause {
            const NAME: &'static str = #stream_name;
            #connect
            #message
            #close
            #disconnect
            #channel
            #stream_end
        }
    })
}

// ---------------------------------------------------------------- #[daemon]

/// Declares the L4 daemon of the domain on an impl of a `Default` type:
/// `#[start]` runs when this box becomes the domain's owner (it may take
/// `info: &StartInfo`); each `#[scheduled("5s")]` (an interval) or
/// `#[scheduled("0 */5 * * * *")]` (a cron expression of 5 to 7 fields,
/// read in the app's time zone: `timezone` in `toilconfig.json`, UTC by
/// default) method runs once per tick and may take `tick: &Tick`. Both
/// return `()` or `Result<(), E>` with `E: Display` (an `Err` is reported to
/// the host log; the box goes on). Schedules are checked here with the
/// host's own parser. The tasks reach the manifest when
/// `toil::export! { daemon: .. }` names the type.
#[proc_macro_attribute]
pub fn daemon(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, "daemon", expand_daemon)
}

fn expand_daemon(attr: TokenStream2, mut item: ItemImpl, surface: &str) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(Error::new(attr.span(), "#[toil::daemon] takes no arguments"));
    }
    check_self_type(&item, surface)?;
    let mut start = None;
    let mut tasks: Vec<(String, String, TokenStream2)> = Vec::new();
    let mut bad_schedules: Option<Error> = None;
    for f in methods(&mut item) {
        for a in take_attrs(f, &DAEMON_ATTRS) {
            if a.path().is_ident("start") {
                no_arguments(&a)?;
                let call = Call::context_only("#[start] hook", "info: &StartInfo", quote!(info));
                if start.replace(call.hook(f)?).is_some() {
                    return Err(Error::new(a.meta.span(), "#[start] is declared twice"));
                }
            } else {
                let name = f.sig.ident.to_string();
                let sched: LitStr = a
                    .parse_args()
                    .map_err(|e| Error::new(e.span(), "expected #[scheduled(\"5s\")] (an interval) or #[scheduled(\"0 0 * * * *\")] (cron)"))?;
                if let Err(e) = toil_schedule::Schedule::parse(&sched.value()) {
                    // The cron parser's reasons span lines, with a caret line under the field.
                    let e = e.to_string();
                    let reason: Vec<&str> = e.lines().map(str::trim).filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^')).collect();
                    let e = Error::new(sched.span(), format!("invalid schedule for task `{name}`: {}", reason.join("; ")));
                    // Every invalid schedule is reported, not only the first.
                    match &mut bad_schedules {
                        Some(all) => all.combine(e),
                        None => bad_schedules = Some(e),
                    }
                }
                if tasks.iter().any(|t| t.0 == name) {
                    return Err(Error::new(a.meta.span(), format!("task `{name}` has two #[scheduled] attributes; a task has one schedule")));
                }
                let call = Call::context_only("scheduled task", "tick: &Tick", quote!(tick));
                tasks.push((name, sched.value(), call.hook(f)?));
            }
        }
        refuse_foreign_attrs(f, surface)?;
    }
    if let Some(e) = bad_schedules {
        return Err(e);
    }
    if tasks.is_empty() {
        return Err(Error::new(Span::call_site(), "#[toil::daemon] impl declares no #[scheduled(..)] task"));
    }
    let decls = tasks.iter().map(|(name, schedule, _)| quote!((#name, #schedule)));
    let arms = tasks.iter().enumerate().map(|(i, (_, _, call))| {
        let idx = i as u32;
        quote! { #idx => ::core::option::Option::Some(#call), }
    });
    let start = start.map(|call| {
        quote! {
            fn on_start(&mut self, info: &::toil::daemon::StartInfo<'_>) -> ::core::result::Result<(), ::std::string::String> {
                #call
            }
        }
    });
    let (generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    Ok(quote! {
        #item
        impl #generics ::toil::daemon::Daemon for #self_ty #where_clause {
            const TASKS: &'static [(&'static str, &'static str)] = &[#(#decls),*];
            #start
            fn on_tick(&mut self, task: u32, tick: &::toil::daemon::Tick) -> ::core::option::Option<::core::result::Result<(), ::std::string::String>> {
                match task {
                    #(#arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    })
}

// ---------------------------------------------------------------- export!

#[derive(Default)]
struct ExportArgs {
    request: Vec<Type>,
    stream: Vec<Type>,
    daemon: Option<Type>,
}

/// The keys of `export!`: the tier's name, then its accepted aliases.
const EXPORT_KEYS: [(&str, &[&str]); 3] = [("request", &["rest"]), ("stream", &["streams"]), ("daemon", &[])];

impl Parse for ExportArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = ExportArgs::default();
        let mut given: Vec<(&str, String)> = Vec::new();
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            let spelled = key.to_string();
            let Some((tier, _)) = EXPORT_KEYS.iter().find(|(tier, aliases)| *tier == spelled || aliases.contains(&spelled.as_str())) else {
                return Err(Error::new(
                    key.span(),
                    format!("unknown key `{spelled}` (expected `request`, `stream` or `daemon`; `rest` and `streams` are aliases)"),
                ));
            };
            if let Some((_, first)) = given.iter().find(|(t, _)| t == tier) {
                let how = if *first == spelled { String::new() } else { format!(" (`{first}` and `{spelled}` both name the {tier} tier)") };
                return Err(Error::new(key.span(), format!("the {tier} tier is given twice{how}")));
            }
            given.push((tier, spelled));
            input.parse::<Token![:]>()?;
            let types: Vec<Type> = if input.peek(syn::token::Bracket) {
                let content;
                syn::bracketed!(content in input);
                Punctuated::<Type, Token![,]>::parse_terminated(&content)?.into_iter().collect()
            } else {
                vec![input.parse()?]
            };
            let mut listed: Vec<String> = Vec::new();
            for ty in &types {
                let text = quote!(#ty).to_string();
                if listed.contains(&text) {
                    return Err(Error::new(ty.span(), format!("`{text}` is listed twice")));
                }
                listed.push(text);
            }
            match *tier {
                "request" => args.request = types,
                "stream" => args.stream = types,
                _ => {
                    if let Some(extra) = types.get(1) {
                        return Err(Error::new(extra.span(), "a domain has one daemon"));
                    }
                    args.daemon = types.into_iter().next();
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

/// One tier's manifest and entry points. The constant (always compiled, so a
/// bad manifest fails `cargo check` too; tests read it) holds the section's
/// bytes; `gated`, compiled only in that tier's pass, places them in the
/// `toil.manifest` custom section next to the tier's exports.
fn tier_items(tier: &str, len: TokenStream2, bytes: TokenStream2, exports: TokenStream2) -> (TokenStream2, TokenStream2) {
    let constant = Ident::new(&format!("__TOIL_{}_MANIFEST", tier.to_uppercase()), Span::call_site());
    let always = quote! {
        #[doc(hidden)]
        #[allow(dead_code)]
        const #constant: [u8; #len] = #bytes;
    };
    let gated = quote! {
        #[cfg(toil_tier = #tier)]
        #[used]
        #[link_section = "toil.manifest"]
        static __TOIL_MANIFEST: [u8; #constant.len()] = #constant;
        #[cfg(toil_tier = #tier)]
        const _: () = { #exports };
    };
    (always, gated)
}

/// Emits, for the types it lists, each tier's manifest and entry points:
/// `toil::export! { request: [Api], stream: [Echo, Chat], daemon: Jobs }`.
/// Every key is optional; `rest` and `streams` are accepted aliases of
/// `request` and `stream`. Use it once per crate, at the root. Only what it
/// lists is declared to the host and dispatched to.
#[proc_macro]
pub fn export(input: TokenStream) -> TokenStream {
    let args = match syn::parse::<ExportArgs>(input) {
        Ok(a) => a,
        Err(e) => return e.to_compile_error().into(),
    };
    let ExportArgs { request, stream, daemon } = &args;
    let mut out = TokenStream2::new();
    let mut gated = TokenStream2::new();
    // Every tier's dispatch is referenced in every pass (and when no tier is
    // set, as in `cargo check`), so each pass sees the same code as used and
    // dead-code warnings mean what they say. Unexported, it is never linked in.
    let daemon_refs = daemon.iter().map(|d| {
        quote! {
            let _ = ::toil::__private::daemon_start::<#d> as fn(i32) -> i32;
            let _ = ::toil::__private::scheduled_tick::<#d> as fn(i32, i64) -> i32;
        }
    });
    out.extend(quote! {
        #[doc(hidden)]
        const _: () = {
            #( let _ = <#request as ::toil::http::Rest>::dispatch
                as fn(&::toil::http::Request<'_>) -> ::core::option::Option<::toil::http::Response>; )*
            #( let _ = ::toil::__private::open_stream::<#stream> as fn() -> bool; )*
            #( #daemon_refs )*
        };
    });
    let m = quote!(::toil::__private::manifest);
    let mut tiers = Vec::new();
    if !request.is_empty() {
        let routes = quote!(&[#(<#request as ::toil::http::Rest>::ROUTES),*]);
        let exports = quote! {
            #[no_mangle]
            pub extern "C" fn handle(input_len: i32) -> i32 {
                ::toil::__private::handle(input_len, |req| {
                    #(
                        if let ::core::option::Option::Some(r) = <#request as ::toil::http::Rest>::dispatch(req) {
                            return ::core::option::Option::Some(r);
                        }
                    )*
                    ::core::option::Option::None
                })
            }
        };
        tiers.push(tier_items("request", quote!(#m::request_len(#routes)), quote!(#m::request(#routes)), exports));
    }
    if !stream.is_empty() {
        let names = quote!(&[#(<#stream as ::toil::stream::Stream>::NAME),*]);
        let exports = quote! {
            #[no_mangle]
            pub extern "C" fn stream_dispatch(event: i32, input_len: i32) -> i32 {
                ::toil::__private::stream_dispatch(event, input_len, |name| {
                    #(
                        if name == <#stream as ::toil::stream::Stream>::NAME {
                            return ::toil::__private::open_stream::<#stream>();
                        }
                    )*
                    false
                })
            }
        };
        tiers.push(tier_items("stream", quote!(#m::stream_len(#names)), quote!(#m::stream(#names)), exports));
    }
    if let Some(d) = daemon {
        let tasks = quote!(<#d as ::toil::daemon::Daemon>::TASKS);
        let exports = quote! {
            #[no_mangle]
            pub extern "C" fn daemon_start(input_len: i32) -> i32 {
                ::toil::__private::daemon_start::<#d>(input_len)
            }
            #[no_mangle]
            pub extern "C" fn scheduled_tick(task: i32, fire_time_ms: i64) -> i32 {
                ::toil::__private::scheduled_tick::<#d>(task, fire_time_ms)
            }
        };
        tiers.push(tier_items("daemon", quote!(#m::daemon_len(#tasks)), quote!(#m::daemon(#tasks)), exports));
    }
    for (always, tier_gated) in tiers {
        out.extend(always);
        gated.extend(tier_gated);
    }
    // `toil build` sets the `toil_tier` cfg; a crate need not declare it to
    // check-cfg for the code generated here.
    out.extend(quote! {
        #[doc(hidden)]
        #[allow(unexpected_cfgs)]
        const _: () = { #gated };
    });
    out.into()
}
