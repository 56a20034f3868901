//! Artifact inspection: everything the host checks before compiling or
//! running a guest. Each failure is a [`LoadError`] naming the cause.

use toil_abi::manifest::{Manifest, ManifestError};
use toil_abi::{exports, imports, Tier, ABI_VERSION, MANIFEST_SECTION};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef, Validator, WasmFeatures};

/// Why an artifact was refused. Every variant names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid wasm module: {0}")]
    Malformed(String),
    #[error("is a wasm component; Toil ABI v{ABI_VERSION} runs core wasm modules only")]
    Component,
    #[error("has no `{MANIFEST_SECTION}` custom section; build it with the toil guest SDK (toil::export!)")]
    MissingManifest,
    #[error("bad manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("was built for Toil ABI v{found}, this host runs ABI v{ABI_VERSION}; rebuild it with a matching SDK")]
    AbiVersion { found: u32 },
    #[error("manifest declares tier code {0}, which no tier has")]
    UnknownTier(u8),
    #[error("is a {found}-tier artifact, but it was loaded as the {expected} tier")]
    WrongTier { found: Tier, expected: Tier },
    #[error("lacks the `{export}` export required by the {tier} tier")]
    MissingExport { export: &'static str, tier: Tier },
    #[error("exports `{export}`, which belongs to another tier than {tier}")]
    ForeignExport { export: String, tier: Tier },
    #[error("export `{export}` has the wrong signature: expected {expected}")]
    ExportSignature { export: &'static str, expected: &'static str },
    #[error("imports `{module}.{name}`, which the {tier} tier does not provide")]
    DisallowedImport { module: String, name: String, tier: Tier },
    #[error("imports a {kind} `{module}.{name}`; only functions may be imported")]
    NonFunctionImport { kind: &'static str, module: String, name: String },
    #[error("declares invalid route {method} {pattern:?}: {reason}")]
    InvalidRoute { method: String, pattern: String, reason: String },
    #[error("declares invalid stream {name:?}: {reason}")]
    InvalidStream { name: String, reason: String },
    #[error("declares task {task:?} with an invalid schedule {expr:?}: {reason}")]
    InvalidSchedule { task: String, expr: String, reason: String },
    #[error("declares no {what}")]
    EmptyManifest { what: &'static str },
    #[error("is {size} bytes, over the {limit}-byte artifact limit")]
    TooLarge { size: usize, limit: usize },
    #[error("failed to compile: {0}")]
    Compile(String),
    #[error("failed to link: {0}")]
    Link(String),
}

/// What inspection learnt about a valid artifact.
#[derive(Debug, Clone)]
pub struct ArtifactInfo {
    pub tier: Tier,
    pub manifest: Manifest,
    /// Whether the module exports a WASI reactor `_initialize`.
    pub has_initialize: bool,
}

/// The signature each entry point must have: (params, results).
fn entry_signature(name: &str) -> Option<(&'static [wasmparser::ValType], &'static str)> {
    use wasmparser::ValType::{I32, I64};
    match name {
        exports::HANDLE | exports::DAEMON_START => Some((&[I32], "(i32) -> i32")),
        exports::STREAM_DISPATCH => Some((&[I32, I32], "(i32, i32) -> i32")),
        exports::SCHEDULED_TICK => Some((&[I32, I64], "(i32, i64) -> i32")),
        _ => None,
    }
}

/// Validates `bytes` as an artifact of tier `expected`.
pub fn inspect(bytes: &[u8], expected: Tier, max_size: usize) -> Result<ArtifactInfo, LoadError> {
    if bytes.len() > max_size {
        return Err(LoadError::TooLarge { size: bytes.len(), limit: max_size });
    }
    if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] != [1, 0, 0, 0] {
        return Err(LoadError::Component);
    }
    Validator::new_with_features(WasmFeatures::default()).validate_all(bytes).map_err(|e| LoadError::Malformed(e.to_string()))?;
    let module = Sections::read(bytes)?;

    let manifest = Manifest::decode(module.manifest.as_deref().ok_or(LoadError::MissingManifest)?)?;
    if manifest.abi_version != ABI_VERSION {
        return Err(LoadError::AbiVersion { found: manifest.abi_version });
    }
    let tier = manifest.tier().ok_or(LoadError::UnknownTier(manifest.tier_code))?;
    if tier != expected {
        return Err(LoadError::WrongTier { found: tier, expected });
    }
    module.check_exports(tier)?;
    module.check_imports(tier)?;
    check_declarations(&manifest, tier)?;
    let has_initialize = module.exported.iter().any(|(n, k, _)| n == exports::INITIALIZE && *k == ExternalKind::Func);
    Ok(ArtifactInfo { tier, manifest, has_initialize })
}

/// What inspection reads of a module's sections.
struct Sections {
    /// The manifest custom section (its parts concatenated, if split).
    manifest: Option<Vec<u8>>,
    func_types: Vec<wasmparser::FuncType>,
    /// The type index of every function, imports first.
    func_type_of: Vec<u32>,
    exported: Vec<(String, ExternalKind, u32)>,
    imported: Vec<(String, String, TypeRef)>,
}

impl Sections {
    fn read(bytes: &[u8]) -> Result<Sections, LoadError> {
        let malformed = |e: wasmparser::BinaryReaderError| LoadError::Malformed(e.to_string());
        let mut s = Sections { manifest: None, func_types: Vec::new(), func_type_of: Vec::new(), exported: Vec::new(), imported: Vec::new() };
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(malformed)? {
                Payload::TypeSection(r) => {
                    for rec in r.into_iter_err_on_gc_types() {
                        s.func_types.push(rec.map_err(malformed)?);
                    }
                }
                Payload::ImportSection(r) => {
                    for imp in r.into_imports() {
                        let imp = imp.map_err(malformed)?;
                        if let TypeRef::Func(t) = imp.ty {
                            s.func_type_of.push(t);
                        }
                        s.imported.push((imp.module.to_string(), imp.name.to_string(), imp.ty));
                    }
                }
                Payload::FunctionSection(r) => {
                    for t in r {
                        s.func_type_of.push(t.map_err(malformed)?);
                    }
                }
                Payload::ExportSection(r) => {
                    for e in r {
                        let e = e.map_err(malformed)?;
                        s.exported.push((e.name.to_string(), e.kind, e.index));
                    }
                }
                Payload::CustomSection(c) if c.name() == MANIFEST_SECTION => {
                    s.manifest.get_or_insert_with(Vec::new).extend_from_slice(c.data());
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// The tier's entry points with their signatures, memory, nothing of another tier.
    fn check_exports(&self, tier: Tier) -> Result<(), LoadError> {
        for (name, _, _) in &self.exported {
            if exports::TIER_ENTRY_POINTS.contains(&name.as_str()) && !tier.required_exports().contains(&name.as_str()) {
                return Err(LoadError::ForeignExport { export: name.clone(), tier });
            }
        }
        for &required in tier.required_exports() {
            let Some((_, kind, index)) = self.exported.iter().find(|(n, _, _)| n == required) else {
                return Err(LoadError::MissingExport { export: required, tier });
            };
            let (params, expected_sig) = entry_signature(required).expect("entry point has a signature");
            let ok = *kind == ExternalKind::Func
                && self
                    .func_type_of
                    .get(*index as usize)
                    .and_then(|t| self.func_types.get(*t as usize))
                    .is_some_and(|ft| ft.params() == params && ft.results() == [wasmparser::ValType::I32]);
            if !ok {
                return Err(LoadError::ExportSignature { export: required, expected: expected_sig });
            }
        }
        if !self.exported.iter().any(|(n, k, _)| n == exports::MEMORY && *k == ExternalKind::Memory) {
            return Err(LoadError::MissingExport { export: exports::MEMORY, tier });
        }
        Ok(())
    }

    /// Functions only, from WASI preview1 or the tier's host functions.
    fn check_imports(&self, tier: Tier) -> Result<(), LoadError> {
        for (module, name, ty) in &self.imported {
            let kind = match ty {
                TypeRef::Func(_) => None,
                TypeRef::Memory(_) => Some("memory"),
                TypeRef::Table(_) => Some("table"),
                TypeRef::Global(_) => Some("global"),
                _ => Some("non-function item"),
            };
            if let Some(kind) = kind {
                return Err(LoadError::NonFunctionImport { kind, module: module.clone(), name: name.clone() });
            }
            let allowed = module == imports::WASI_P1 || (module == imports::MODULE && tier.allowed_host_imports().contains(&name.as_str()));
            if !allowed {
                return Err(LoadError::DisallowedImport { module: module.clone(), name: name.clone(), tier });
            }
        }
        Ok(())
    }
}

/// The tier's declarations: at least one, each valid.
fn check_declarations(manifest: &Manifest, tier: Tier) -> Result<(), LoadError> {
    match tier {
        Tier::Request => {
            if manifest.routes.is_empty() {
                return Err(LoadError::EmptyManifest { what: "route" });
            }
            for r in &manifest.routes {
                let bad = |reason: String| LoadError::InvalidRoute { method: r.method.clone(), pattern: r.pattern.clone(), reason };
                if !toil_abi::route::METHODS.contains(&r.method.as_str()) {
                    return Err(bad("unknown method".into()));
                }
                toil_abi::route::validate_pattern(&r.pattern).map_err(|e| bad(e.to_string()))?;
            }
        }
        Tier::Stream if manifest.streams.is_empty() => return Err(LoadError::EmptyManifest { what: "stream" }),
        Tier::Stream => {
            let mut seen = std::collections::HashSet::new();
            for name in &manifest.streams {
                validate_stream_name(name).map_err(|reason| LoadError::InvalidStream { name: name.clone(), reason })?;
                if !seen.insert(name.as_str()) {
                    return Err(LoadError::InvalidStream { name: name.clone(), reason: "declared twice".into() });
                }
            }
        }
        Tier::Daemon if manifest.tasks.is_empty() => return Err(LoadError::EmptyManifest { what: "scheduled task" }),
        Tier::Daemon => {
            for t in &manifest.tasks {
                toil_schedule::Schedule::parse(&t.schedule).map_err(|e| LoadError::InvalidSchedule {
                    task: t.name.clone(),
                    expr: t.schedule.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
    }
    Ok(())
}

/// A stream is mounted at `/<name>`: one path segment of unreserved URL
/// characters, so the name a client opens is the name the manifest says.
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if name == "." || name == ".." {
        return Err("is a relative path segment".into());
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))) {
        Some(c) => Err(format!("contains {c:?}; use letters, digits, '-', '_', '.', '~' (it is one path segment)")),
        None => Ok(()),
    }
}
