//! The layout rules of the code base, checked on its text (nothing is built
//! or run):
//!
//! - **crates are layered**: each crate depends only on crates of a lower
//!   layer (the table [`LAYERS`]), so nothing imports upward;
//! - **no import circle inside a crate**: the graph of its modules, with an
//!   arrow for each `crate::`, `super::` or `self::` path that names another
//!   module, has no cycle;
//! - **no long function**: no function outside tests is longer than
//!   [`MAX_FUNCTION_LINES`] lines.
//!
//! The reading is textual and deliberately simple: test code is the part of
//! a file from its first top-level `#[cfg(test)]` on; a path names the
//! deepest module it starts with, or, through the crate root's `pub use`
//! lines, the module a re-exported name lives in. `docs/architecture.md`
//! explains the layers and shows the module graphs this test keeps acyclic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every crate of the repository and its layer: a crate may depend on
/// crates of lower layers only. The guest SDK's crates share the bottom
/// layer (the ABI, schedules) with the host and nothing else.
const LAYERS: &[(&str, u32)] = &[
    // Wire formats and pure cores: no internal dependencies.
    ("toil-abi", 0),
    ("toil-metrics", 0),
    ("toil-schedule", 0),
    ("toil-conns", 0),
    // Channels: topic logs and fan-out (a deterministic core) with their transports.
    ("toil-channels", 1),
    // Deterministic cores built on them: cluster state, leases, placement.
    ("toil-cluster", 1),
    // The wasm runtime.
    ("toil-runtime", 2),
    // Subsystems: the network edge, the raft log, the daemon owner.
    ("toil-edge", 3),
    ("toil-raft", 3),
    ("toil-daemon", 3),
    // Configuration: reads the file and builds each subsystem's settings
    // (it owns every default, so it knows the settings' types).
    ("toil-config", 4),
    // Deploys and the guest build, driven by a config.
    ("toil-deploy", 5),
    ("toil-build", 5),
    // The binary: the composition root.
    ("toil-cli", 6),
    // The guest SDK: its macros read the ABI's and the scheduler's rules at
    // compile time; the SDK crate builds on both.
    ("toil-macros", 1),
    ("toil", 2),
];

const MAX_FUNCTION_LINES: usize = 100;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// Every crate directory: the host workspace's and the guest SDK's.
fn crate_dirs() -> Vec<PathBuf> {
    let root = repo();
    let mut dirs = Vec::new();
    for parent in ["crates", "guest-sdk"] {
        for entry in std::fs::read_dir(root.join(parent)).expect("read crates") {
            let dir = entry.expect("entry").path();
            if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() {
                dirs.push(dir);
            }
        }
    }
    dirs.sort();
    dirs
}

fn crate_name(dir: &Path) -> String {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
    let line = manifest.lines().find(|l| l.trim_start().starts_with("name")).expect("package name");
    line.split('"').nth(1).expect("quoted name").to_string()
}

/// The crate's `[dependencies]` (normal and build, not dev) on other crates of the repository.
fn internal_dependencies(dir: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
    let mut section = String::new();
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section != "[dependencies]" && section != "[build-dependencies]" {
            continue;
        }
        let name = line.split(['.', '=', ' ']).next().unwrap_or("");
        if LAYERS.iter().any(|(n, _)| *n == name) {
            deps.push(name.to_string());
        }
    }
    deps
}

fn layer(name: &str) -> u32 {
    LAYERS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("crate {name} has no layer in LAYERS: add it")).1
}

#[test]
fn crates_depend_only_on_lower_layers() {
    let mut upward = Vec::new();
    for dir in crate_dirs() {
        let name = crate_name(&dir);
        for dep in internal_dependencies(&dir) {
            if layer(&dep) >= layer(&name) {
                upward.push(format!("{name} (layer {}) depends on {dep} (layer {})", layer(&name), layer(&dep)));
            }
        }
    }
    assert!(upward.is_empty(), "dependencies that do not go down a layer:\n{}", upward.join("\n"));
}

// ----------------------------------------------------------------- modules

/// A source file as a module: its path in the crate (`a::b`; `""` for the root) and its non-test text.
struct Module {
    path: String,
    file: PathBuf,
    text: String,
}

fn modules(src: &Path) -> Vec<Module> {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "bin"))
        .map(|file| {
            let rel = file.strip_prefix(src).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&file).expect("source");
            Module { path: parts.join("::"), file, text: without_tests(&text) }
        })
        .collect()
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's text before its first top-level `#[cfg(test)]`.
fn without_tests(text: &str) -> String {
    match text.find("\n#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// The paths (`a::b::C`, relative to the crate root) that a module's text names.
fn referenced_paths(module: &Module) -> Vec<String> {
    let code = strip_comments_and_strings(&module.text);
    let mut paths = Vec::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent(&module.path)), ("self::", module.path.clone())] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
                continue; // `$crate::`, `foo::crate::`, the second `super::` of `super::super::`…
            }
            let rest = &code[at + prefix.len()..];
            // `super::super::x`: one module further up per `super`.
            let mut base = base.clone();
            let mut tail_start = rest;
            while let Some(more) = tail_start.strip_prefix("super::") {
                base = parent(&base);
                tail_start = more;
            }
            for tail in expand_use_tree(tail_start) {
                paths.push(join(&base, &tail));
            }
        }
    }
    paths
}

fn parent(path: &str) -> String {
    path.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string())
}

fn join(base: &str, tail: &str) -> String {
    if base.is_empty() {
        tail.to_string()
    } else {
        format!("{base}::{tail}")
    }
}

/// The paths at the start of `s`: `a::b::C` → [`a::b::C`];
/// `a::{b::C, d}` → [`a::b::C`, `a::d`].
fn expand_use_tree(s: &str) -> Vec<String> {
    let s = s.trim_start();
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(s.len());
    let head = s[..end].trim_end_matches(':').to_string();
    if s[end..].starts_with('{') && s[..end].ends_with("::") {
        let inner = &s[end + 1..];
        let mut depth = 0;
        let mut close = inner.len();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    close = i;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let mut out = Vec::new();
        for item in split_top_level(&inner[..close]) {
            for tail in expand_use_tree(item) {
                out.push(if head.is_empty() { tail } else { format!("{head}::{tail}") });
            }
        }
        return out;
    }
    vec![head]
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty() && *p != "self").collect()
}

/// Code with comments removed and string/char literals emptied, so braces
/// and paths inside them count for nothing.
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) && !prev_is_ident(b, i) {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&close) {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if b.get(i) == Some(&b'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let lit_end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..].iter().position(|&c| c == b'\'').map(|p| i + 2 + p)
            } else {
                std::str::from_utf8(&b[i + 1..])
                    .ok()
                    .and_then(|s| s.chars().next())
                    .map(|c| i + 1 + c.len_utf8())
                    .filter(|&e| b.get(e) == Some(&b'\''))
            };
            match lit_end {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let c = text[i..].chars().next().expect("char");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn prev_is_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// The crate root's re-exports: name → the path it stands for.
fn root_reexports(root: &Module) -> BTreeMap<String, String> {
    let code = strip_comments_and_strings(&root.text);
    let mut names = BTreeMap::new();
    for stmt in code.split(';') {
        let stmt = stmt.trim();
        let Some(tree) = stmt.strip_prefix("pub use ") else { continue };
        for path in expand_use_tree(tree) {
            let (path, alias) = match path.split_once(" as ") {
                Some((p, a)) => (p.trim().to_string(), a.trim().to_string()),
                None => (path.clone(), path.rsplit("::").next().unwrap_or(&path).to_string()),
            };
            names.insert(alias, path);
        }
    }
    names
}

/// The module a path names: the deepest known module it starts with.
fn target_module(path: &str, known: &BTreeSet<String>, reexports: &BTreeMap<String, String>) -> Option<String> {
    let first = path.split("::").next().unwrap_or("");
    let path = match reexports.get(first) {
        Some(real) if !known.contains(first) => real.replacen("crate::", "", 1),
        _ => path.to_string(),
    };
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|p| known.contains(p))
}

/// Arrows between the modules of one crate: module → modules it names.
fn module_graph(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(&dir.join("src"));
    let known: BTreeSet<String> = modules.iter().map(|m| m.path.clone()).filter(|p| !p.is_empty()).collect();
    let reexports = modules.iter().find(|m| m.path.is_empty()).map(root_reexports).unwrap_or_default();
    let mut graph = BTreeMap::new();
    for m in &modules {
        let targets: BTreeSet<String> = referenced_paths(m)
            .iter()
            .filter_map(|p| target_module(p, &known, &reexports))
            // A module naming its own children (or itself) is not an arrow back.
            .filter(|t| !(t == &m.path || t.starts_with(&format!("{}::", m.path)) || m.path.is_empty()))
            .collect();
        graph.insert(if m.path.is_empty() { "(root)".to_string() } else { m.path.clone() }, targets);
    }
    graph
}

/// One cycle of the graph, if it has any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = stack.iter().position(|n| n == node).expect("open nodes are on the stack");
                let mut cycle = stack[at..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn no_crate_has_an_import_circle() {
    let mut circles = Vec::new();
    for dir in crate_dirs() {
        if let Some(cycle) = find_cycle(&module_graph(&dir)) {
            circles.push(format!("{}: {}", crate_name(&dir), cycle.join(" -> ")));
        }
    }
    assert!(circles.is_empty(), "import circles inside crates:\n{}", circles.join("\n"));
}

#[test]
fn the_circle_finder_finds_circles() {
    let module = |path: &str, text: &str| Module { path: path.into(), file: PathBuf::new(), text: text.into() };
    let a = module("a", "use crate::b::{X, c::Y};\nfn f() { let s = \"crate::z\"; }");
    assert_eq!(referenced_paths(&a), ["b::X", "b::c::Y"]);
    let c = module("b::c", "use super::super::a::Q; use self::inner::R;");
    assert_eq!(referenced_paths(&c), ["a::Q", "b::c::inner::R"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let mut acyclic = graph.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
}

// --------------------------------------------------------------- functions

/// Functions outside tests longer than the limit: `file:line name (lines)`.
fn long_functions(module: &Module) -> Vec<String> {
    let code = strip_comments_and_strings(&module.text);
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        // The body opens at the first `{` at or after the signature (a `;` first: no body).
        let mut depth = 0usize;
        let mut opened = false;
        let mut end = None;
        'scan: for (n, l) in lines.iter().enumerate().skip(start) {
            for ch in l.chars() {
                match ch {
                    ';' if !opened => break 'scan,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if opened && depth == 0 {
                            end = Some(n);
                            break 'scan;
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(end) = end {
            let length = end - start + 1;
            if length > MAX_FUNCTION_LINES {
                found.push(format!("{}:{} {name} ({length} lines)", module.file.display(), start + 1));
            }
        }
    }
    found
}

/// The function a line declares, if it declares one.
fn fn_name(line: &str) -> Option<&str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "fn")?;
    let modifiers = &words[..at];
    if !modifiers.iter().all(|w| w.starts_with("pub") || matches!(*w, "async" | "const" | "unsafe" | "extern" | "\"\"")) {
        return None;
    }
    let name = words.get(at + 1)?;
    Some(name.split(['(', '<']).next().unwrap_or(name))
}

#[test]
fn no_function_outside_tests_is_too_long() {
    let mut long = Vec::new();
    for dir in crate_dirs() {
        for module in modules(&dir.join("src")) {
            long.extend(long_functions(&module));
        }
    }
    assert!(long.is_empty(), "functions over {MAX_FUNCTION_LINES} lines:\n{}", long.join("\n"));
}

#[test]
fn the_length_check_counts_bodies() {
    let body = (0..101).map(|i| format!("    let x{i} = '{{';\n")).collect::<String>();
    let module = Module { path: "m".into(), file: PathBuf::from("m.rs"), text: format!("pub async fn long() {{\n{body}}}\nfn short() {{}}\n") };
    assert_eq!(long_functions(&module), ["m.rs:1 long (103 lines)"]);
}
