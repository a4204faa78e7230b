//! No import cycles among the modules of the workspace's crates.
//!
//! A module's imports are every path it names through `crate::` or `super::`, in `use` items
//! (groups like `use crate::{a::X, b::{Y, Z}}` expanded) and inline in code; its
//! `#[cfg(test)] mod tests` and comments are left out. A path belongs to the longest module it
//! starts with. A module naming its own submodules is not importing: it is made of them (a
//! `mod.rs` that routes to its parts), while a submodule naming its parent is. Run it alone with
//! `cargo test -p herald-gateway --test module_cycles`; a failure lists each cycle with the
//! imports that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The crates whose modules must form no cycle, relative to the workspace root.
const CRATES: &[&str] = &["gateway", "operator", "loadtest", "testkit"];

#[test]
fn the_workspace_crates_have_no_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = String::new();
    let mut modules = 0;
    for krate in CRATES {
        let graph = Graph::of_crate(&root.join(krate).join("src"));
        modules += graph.files.len();
        for cycle in graph.cycles() {
            report.push_str(&format!("{krate}: {}\n", graph.describe(&cycle)));
        }
    }
    assert!(modules > 40, "only {modules} modules found: is the crate layout read right?");
    assert!(report.is_empty(), "import cycles:\n{report}");
}

#[test]
fn a_cycle_through_a_group_import_a_child_and_super_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let file = src.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a/mod.rs", "mod inner;\nuse crate::{c::Z, b::{X, Y}};\npub fn f() { inner::g() }\n");
    write("a/inner.rs", "pub fn g() { super::super::c::h() }\n");
    write("b.rs", "// use crate::a::f; (a comment, not an import)\npub struct X;\npub struct Y;\n");
    write("c.rs", "pub struct Z;\npub fn h() { crate::a::f() }\n#[cfg(test)]\nmod tests {\n    use crate::b::X;\n}\n");
    let graph = Graph::of_crate(src);
    let edges = |from: &str| graph.edges[from].keys().cloned().collect::<Vec<_>>();
    assert_eq!(edges("a"), ["b", "c"], "a module's own child is not an import");
    assert_eq!(edges("a::inner"), ["c"]);
    assert_eq!(edges("b"), Vec::<String>::new(), "comments are not imports");
    assert_eq!(edges("c"), ["a"], "test modules are not imports");
    let cycles = graph.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    let shown = graph.describe(&cycles[0]);
    assert!(shown.contains("a -> c (Z)") && shown.contains("c -> a (f)"), "{shown}");
}

/// A crate's modules and the imports between them.
struct Graph {
    /// module path ("" for the crate root, "broker::nats") -> its file
    files: BTreeMap<String, PathBuf>,
    /// module -> module it imports -> the names it takes
    edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Graph {
    fn of_crate(src: &Path) -> Graph {
        let mut files = BTreeMap::new();
        collect(src, src, &mut files);
        let mut graph = Graph { edges: files.keys().map(|m| (m.clone(), BTreeMap::new())).collect(), files };
        let modules: Vec<(String, PathBuf)> = graph.files.iter().map(|(m, f)| (m.clone(), f.clone())).collect();
        for (module, file) in modules {
            let code = code_of(&fs::read_to_string(&file).unwrap());
            let children: Vec<String> = declared_children(&code);
            for path in referenced_paths(&code) {
                let absolute = graph.absolute(&module, &path, &children);
                if let Some((target, name)) = absolute.and_then(|p| graph.owner(&p))
                    && !is_within(&target, &module)
                {
                    graph.edges.get_mut(&module).unwrap().entry(target).or_default().insert(name);
                }
            }
        }
        graph
    }

    /// `path` as seen from `module`, from the crate root; None for paths outside the crate.
    fn absolute(&self, module: &str, path: &[String], children: &[String]) -> Option<Vec<String>> {
        let mut here: Vec<String> =
            if module.is_empty() { vec![] } else { module.split("::").map(String::from).collect() };
        let mut rest = path;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                here.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    here.pop()?;
                    rest = &rest[1..];
                }
            }
            Some(first) if children.iter().any(|c| c == first) => {}
            _ => return None,
        }
        // `self::x`, and a child's name, continue from this module's own path.
        here.extend(rest.iter().cloned());
        Some(here)
    }

    /// The longest module `path` starts with, and the first name after it.
    fn owner(&self, path: &[String]) -> Option<(String, String)> {
        for len in (0..=path.len()).rev() {
            let candidate = path[..len].join("::");
            if self.files.contains_key(&candidate) {
                let name = path.get(len).cloned().unwrap_or_else(|| "*".into());
                return Some((candidate, name));
            }
        }
        None
    }

    /// Every set of modules that import each other in a circle (Tarjan's strongly connected
    /// components with more than one module).
    fn cycles(&self) -> Vec<Vec<String>> {
        struct Tarjan<'a> {
            graph: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            out: Vec<Vec<String>>,
        }
        impl<'a> Tarjan<'a> {
            fn visit(&mut self, v: &'a str) {
                let i = self.index.len();
                self.index.insert(v, i);
                self.low.insert(v, i);
                self.stack.push(v);
                self.on_stack.insert(v);
                for w in self.graph.edges[v].keys() {
                    let w = w.as_str();
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let lw = self.low[w];
                        let lv = self.low.get_mut(v).unwrap();
                        *lv = (*lv).min(lw);
                    } else if self.on_stack.contains(w) {
                        let iw = self.index[w];
                        let lv = self.low.get_mut(v).unwrap();
                        *lv = (*lv).min(iw);
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut component = Vec::new();
                    loop {
                        let w = self.stack.pop().unwrap();
                        self.on_stack.remove(w);
                        component.push(w.to_owned());
                        if w == v {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        component.sort();
                        self.out.push(component);
                    }
                }
            }
        }
        let mut t = Tarjan {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: vec![],
            on_stack: BTreeSet::new(),
            out: vec![],
        };
        for v in self.edges.keys() {
            if !t.index.contains_key(v.as_str()) {
                t.visit(v);
            }
        }
        t.out
    }

    /// "a, b, c: a -> b (X, Y); b -> c (Z); c -> a (f)"
    fn describe(&self, cycle: &[String]) -> String {
        let name = |m: &str| if m.is_empty() { "crate".to_owned() } else { m.to_owned() };
        let mut edges = Vec::new();
        for from in cycle {
            for (to, names) in &self.edges[from] {
                if cycle.contains(to) {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    edges.push(format!("{} -> {} ({})", name(from), name(to), names.join(", ")));
                }
            }
        }
        format!("{}: {}", cycle.iter().map(|m| name(m)).collect::<Vec<_>>().join(", "), edges.join("; "))
    }
}

/// Whether `module` is `parent` or one of its submodules. A module naming its own submodules
/// is not an import: it is made of them (a facade `mod.rs` routing to its parts).
fn is_within(module: &str, parent: &str) -> bool {
    parent.is_empty() || module == parent || module.starts_with(&format!("{parent}::"))
}

/// The `.rs` files under `dir`, by module path. `main.rs` is its own crate beside `lib.rs` (it
/// reaches the library by the crate's name, never by `crate::`), so it is left out when both exist.
fn collect(src: &Path, dir: &Path, files: &mut BTreeMap<String, PathBuf>) {
    let has_lib = src.join("lib.rs").exists();
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(src, &path, files);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let relative = path.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let last = parts.last().cloned().unwrap_or_default();
        if parts.len() == 1 && (last == "lib" || (last == "main" && !has_lib)) {
            parts.clear();
        } else if parts.len() == 1 && last == "main" {
            continue;
        } else if last == "mod" {
            parts.pop();
        }
        files.insert(parts.join("::"), path);
    }
}

/// The source without comments, string literals' contents, and a trailing test module.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod ")) {
            break;
        }
        let code = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("pub ").or_else(|| line.strip_prefix("pub(crate) ")).unwrap_or(line);
            let name = rest.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_owned())
        })
        .collect()
}

/// Every path a file names that may lead into the crate: the expanded trees of its `use` items,
/// and `crate::`/`super::`/`self::`/child paths in its code.
fn referenced_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    let mut outside_use = String::new();
    while let Some(at) = find_use(rest) {
        outside_use.push_str(&rest[..at]);
        let after = &rest[at..];
        let start = after.find("use ").unwrap() + 4;
        let end = after.find(';').unwrap_or(after.len());
        expand(&after[start..end], &mut Vec::new(), &mut paths);
        rest = &after[(end + 1).min(after.len())..];
    }
    outside_use.push_str(rest);
    // Inline paths: identifiers joined by `::`.
    let bytes = outside_use.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':'));
        if !at_word {
            i += 1;
            continue;
        }
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let s = j;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            segments.push(outside_use[s..j].to_owned());
            if outside_use[j..].starts_with("::")
                && outside_use[j + 2..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            {
                j += 2;
            } else {
                break;
            }
        }
        if segments.len() > 1 {
            paths.push(segments);
        }
        i = j.max(i + 1);
    }
    paths
}

/// The byte offset of the next `use` item (at the start of a line, maybe `pub`), if any.
fn find_use(code: &str) -> Option<usize> {
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let item = trimmed.strip_prefix("pub(crate) ").or_else(|| trimmed.strip_prefix("pub ")).unwrap_or(trimmed);
        if item.starts_with("use ") {
            return Some(offset + (line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    None
}

/// Expands a use tree (`crate::{a::X, b::{Y, Z}}`) into full paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> =
            tree[..open].split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let depth = prefix.len();
        prefix.extend(head);
        for part in split_top_level(inner) {
            expand(part, prefix, out);
        }
        prefix.truncate(depth);
        return;
    }
    let path = tree.split(" as ").next().unwrap_or(tree);
    let mut full = prefix.clone();
    full.extend(path.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "self").map(String::from));
    if !full.is_empty() {
        out.push(full);
    }
}

/// `a, b::{c, d}, e` -> ["a", "b::{c, d}", "e"]
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
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
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}
