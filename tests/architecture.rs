//! The architecture, checked by a tool rather than by eye: the module
//! import graph of `src/` (every `crate::`, `super::` and `self::` path in
//! non-test code, resolved to the module file it names) has no cycles,
//! and the layers import only what ARCHITECTURE.md allows.
//!
//! A module's own submodules count as imports of it (it declares them);
//! a submodule reaching back up into the module that declares it would
//! close a circle, so shared pieces live in sibling files instead.
//!
//! ```sh
//! cargo test --test architecture -- --nocapture   # prints the graph
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path like `ledger::shard`, `""` for the crate root.
type Module = String;

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/ledger/shard.rs` → `ledger::shard`; `src/ledger/mod.rs` →
/// `ledger`; `src/lib.rs` → `""`; `src/bench_support.rs` → `__bench`.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src/");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs").to_owned();
    match stem.as_str() {
        "lib" | "mod" => {}
        "bench_support" => parts.push("__bench".to_owned()),
        _ => parts.push(stem),
    }
    parts.join("::")
}

/// The source without comments, string literals and `#[cfg(test)]`
/// modules (their imports are the tests', not the layers').
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < bytes.len() && bytes[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < bytes.len() && !(bytes[i] == '*' && bytes[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' {
            // A char literal (`'"'`, `'\''`, `b'{'`), or a lifetime.
            if next == Some('\\') {
                i += 2;
                while i < bytes.len() && bytes[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if bytes.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                if bytes[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(c);
            i += 1;
        }
    }
    strip_test_modules(&out)
}

/// Removes `#[cfg(test)] mod name { ... }` blocks.
fn strip_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        if trimmed.starts_with("mod ") {
            if let Some(open) = trimmed.find('{') {
                if trimmed[..open].contains(';') {
                    // `#[cfg(test)] mod model;`: a file of its own.
                    let semi = trimmed.find(';').unwrap();
                    rest = &trimmed[semi + 1..];
                    continue;
                }
                let mut depth = 0;
                let mut end = open;
                for (i, c) in trimmed[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &trimmed[end..];
                continue;
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Every path in `code` starting with `crate::`, `super::` or `self::`,
/// with `use a::{b, c::d}` groups expanded one level.
fn paths_in(code: &str) -> Vec<String> {
    paths_with_depth(code).into_iter().map(|(p, _)| p).collect()
}

/// The brace ranges of inline `mod name { ... }` blocks.
fn inline_modules(code: &str) -> Vec<(usize, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let mut ranges = Vec::new();
    let text: String = chars.iter().collect();
    let mut from = 0;
    while let Some(at) = text[from..].find("mod ") {
        let start = from + at;
        from = start + 4;
        let before_ok =
            start == 0 || !text[..start].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        let rest = &text[start + 4..];
        let name_len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let after = rest[name_len..].trim_start();
        if !before_ok || name_len == 0 || !after.starts_with('{') {
            continue;
        }
        let open = start + 4 + name_len + (rest[name_len..].len() - after.len());
        let mut depth = 0;
        for (i, c) in text[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        ranges.push((open, open + i));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    ranges
}

/// [`paths_in`], with how many inline modules enclose each path.
fn paths_with_depth(code: &str) -> Vec<(String, usize)> {
    let inline = inline_modules(code);
    let depth_at = |byte: usize| {
        inline
            .iter()
            .filter(|(a, b)| *a < byte && byte < *b)
            .count()
    };
    let mut paths = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let byte_of: Vec<usize> = code.char_indices().map(|(b, _)| b).collect();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        if starts_word
            && (rest.starts_with("crate::")
                || rest.starts_with("super::")
                || rest.starts_with("self::"))
        {
            let mut j = i;
            let mut path = String::new();
            while j < chars.len() && (is_ident(chars[j]) || chars[j] == ':') {
                path.push(chars[j]);
                j += 1;
            }
            if j < chars.len() && chars[j] == '{' {
                // A group: each first segment inside it.
                let mut depth = 0;
                let mut item = String::new();
                let mut k = j;
                while k < chars.len() {
                    let c = chars[k];
                    match c {
                        '{' => {
                            depth += 1;
                            if depth > 1 {
                                item.push(c);
                            }
                        }
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                            item.push(c);
                        }
                        ',' if depth == 1 => {
                            paths.push((
                                format!("{path}{}", first_segments(&item)),
                                depth_at(byte_of[i]),
                            ));
                            item.clear();
                        }
                        _ => item.push(c),
                    }
                    k += 1;
                }
                if !item.trim().is_empty() {
                    paths.push((
                        format!("{path}{}", first_segments(&item)),
                        depth_at(byte_of[i]),
                    ));
                }
                i = k;
            } else {
                paths.push((path.trim_end_matches(':').to_owned(), depth_at(byte_of[i])));
                i = j;
            }
        } else {
            i += 1;
        }
    }
    paths
}

/// `shard::{A, B}` → `shard`; `stats::Counts` → `stats::Counts`.
fn first_segments(item: &str) -> String {
    let item = item.trim();
    let end = item.find('{').unwrap_or(item.len());
    item[..end]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches(':')
        .to_owned()
}

/// Modules declared `#[cfg(test)] mod name;` (files of their own that
/// exist only in test builds).
fn test_only_modules(src: &Path, files: &[PathBuf]) -> BTreeSet<Module> {
    let mut out = BTreeSet::new();
    for file in files {
        let module = module_of(src, file);
        let text = std::fs::read_to_string(file).expect("readable source");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("#[cfg(test)]") {
            let after = rest[at + "#[cfg(test)]".len()..].trim_start();
            if let Some(decl) = after.strip_prefix("mod ") {
                let name: String = decl
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if decl[name.len()..].trim_start().starts_with(';') {
                    out.insert(if module.is_empty() {
                        name
                    } else {
                        format!("{module}::{name}")
                    });
                }
            }
            rest = &rest[at + 1..];
        }
    }
    out
}

/// What the crate root re-exports: item name → the module it comes from.
fn root_reexports(lib: &str) -> BTreeMap<String, Module> {
    let mut names = BTreeMap::new();
    let code = code_of(lib);
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(rest) = statement.strip_prefix("pub use ") else {
            continue;
        };
        let rest: String = rest.split_whitespace().collect();
        match rest.split_once("::{") {
            Some((module, items)) => {
                for item in items.trim_end_matches('}').split(',') {
                    if !item.is_empty() {
                        names.insert(item.to_owned(), module.replace("crate::", ""));
                    }
                }
            }
            None => {
                if let Some((module, item)) = rest.rsplit_once("::") {
                    names.insert(item.to_owned(), module.replace("crate::", ""));
                }
            }
        }
    }
    names
}

/// Resolves a path used in `from` (inside `inline` inline modules) to the
/// deepest known module it names.
fn resolve(
    from: &Module,
    path: &str,
    inline: usize,
    modules: &BTreeSet<Module>,
    reexports: &BTreeMap<String, Module>,
) -> Option<Module> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    // `super::` inside an inline module first leaves that module.
    let mut inline = inline;
    while inline > 0 && segments.first() == Some(&"super") {
        segments[0] = "self";
        inline -= 1;
        if segments.get(1) == Some(&"super") {
            segments.remove(0);
        }
    }
    if segments.len() == 2 && segments[0] == "crate" && !modules.contains(segments[1]) {
        if let Some(module) = reexports.get(segments[1]) {
            return Some(module.clone());
        }
    }
    let mut base: Vec<String> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").map(str::to_owned).collect()
    };
    match segments.first().copied() {
        Some("crate") => {
            base.clear();
            segments.remove(0);
        }
        Some("self") => {
            segments.remove(0);
        }
        Some("super") => {
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
        }
        _ => return None,
    }
    let mut best = None;
    let mut current = base.clone();
    if modules.contains(&current.join("::")) {
        best = Some(current.join("::"));
    }
    for segment in segments {
        current.push(segment.to_owned());
        let name = current.join("::");
        if modules.contains(&name) {
            best = Some(name);
        } else {
            break;
        }
    }
    best
}

/// The import graph: module → modules it refers to (not itself).
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let test_only = test_only_modules(&src, &files);
    let modules: BTreeSet<Module> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| !test_only.contains(m))
        .collect();
    let reexports = root_reexports(&std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if !modules.contains(&module) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).expect("readable source"));
        let edges = graph.entry(module.clone()).or_default();
        for (path, inline) in paths_with_depth(&code) {
            if let Some(target) = resolve(&module, &path, inline, &modules, &reexports) {
                if target != module {
                    edges.insert(target);
                }
            }
        }
    }
    // A module depends on the submodules it declares (the crate root's
    // declarations are the whole crate, so they are left out: the root
    // only re-exports).
    for module in &modules {
        if let Some((parent, _)) = module.rsplit_once("::") {
            graph
                .entry(parent.to_owned())
                .or_default()
                .insert(module.clone());
        }
    }
    graph
}

/// A cycle in `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                0 => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
                1 => {
                    let start = stack.iter().position(|m| m == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

fn shown(name: &str) -> &str {
    if name.is_empty() {
        "crate"
    } else {
        name
    }
}

#[test]
fn the_module_graph_has_no_cycles() {
    let graph = graph();
    for (module, edges) in &graph {
        let edges: Vec<&str> = edges.iter().map(|e| shown(e)).collect();
        println!("{} -> {}", shown(module), edges.join(", "));
    }
    if let Some(cycle) = find_cycle(&graph) {
        let cycle: Vec<&str> = cycle.iter().map(|m| shown(m)).collect();
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

/// The layer table of ARCHITECTURE.md: what each layer must never import.
#[test]
fn layers_import_only_downwards() {
    let graph = graph();
    let above_the_ledger = [
        "server",
        "events",
        "export",
        "observe",
        "view",
        "report",
        "sampler",
        "watchdog",
        "background",
        "pool",
        "checkout",
        "guard",
        "shared",
        "postgres",
        "__bench",
    ];
    let rules: &[(&str, &[&str])] = &[
        // The ledger records only.
        ("ledger", &above_the_ledger),
        // Output is called by `observe` and reads nothing of the state.
        (
            "events",
            &[
                "ledger", "observe", "view", "report", "sampler", "watchdog", "pool", "shared",
                "checkout", "guard", "postgres", "export",
            ],
        ),
        (
            "export",
            &[
                "ledger", "observe", "view", "report", "sampler", "watchdog", "pool", "shared",
                "checkout", "guard", "postgres", "events",
            ],
        ),
        // Reactions never read views or reports, nor run threads.
        (
            "observe",
            &[
                "view", "report", "sampler", "watchdog", "pool", "shared", "checkout", "postgres",
            ],
        ),
        // Readers never react.
        (
            "view",
            &[
                "events", "export", "report", "sampler", "watchdog", "pool", "checkout", "postgres",
            ],
        ),
        (
            "report",
            &[
                "events", "export", "sampler", "watchdog", "pool", "checkout", "postgres",
            ],
        ),
        // The core knows nothing of PostgreSQL.
        ("checkout", &["postgres"]),
        ("guard", &["postgres"]),
        ("pool", &["postgres"]),
        ("shared", &["postgres"]),
        ("sampler", &["postgres"]),
        ("background", &["postgres", "events", "observe"]),
        // The server's side is plain data and a seam: it reacts to nothing
        // and knows nothing of PostgreSQL.
        (
            "server",
            &[
                "events", "export", "observe", "view", "report", "sampler", "watchdog", "pool",
                "shared", "checkout", "guard", "postgres",
            ],
        ),
    ];
    let mut violations = Vec::new();
    for (module, edges) in &graph {
        for (layer, forbidden) in rules {
            if top(module) != *layer {
                continue;
            }
            for edge in edges {
                if forbidden.contains(&top(edge)) {
                    violations.push(format!("{} imports {}", shown(module), shown(edge)));
                }
            }
        }
    }
    // Only `observe` calls the output modules.
    for (module, edges) in &graph {
        let m = top(module);
        if ["observe", "events", "export"].contains(&m) || module.is_empty() {
            continue;
        }
        for edge in edges {
            if top(edge) == "events" && !edge.is_empty() {
                // The public constant `TARGET` is re-exported by the crate
                // root only.
                violations.push(format!("{} calls events directly", shown(module)));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layer violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_a_cycle_and_a_group() {
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("a".into());
    assert!(find_cycle(&graph).is_some());
    let paths = paths_in("use crate::{ledger::{A, B}, view};\nlet x = super::shard::f();");
    assert!(paths.contains(&"crate::ledger".to_owned()), "{paths:?}");
    assert!(paths.contains(&"crate::view".to_owned()), "{paths:?}");
    assert!(paths.contains(&"super::shard::f".to_owned()), "{paths:?}");
}
