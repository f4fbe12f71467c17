//! The `use crate::…` graph among a crate's source files, and its cycles.
//!
//! Each file under a `src` directory is a module (`a/b.rs` and `a/b/mod.rs` are `a::b`,
//! `lib.rs` and `main.rs` the crate root; `src/bin` holds other crates and is skipped). A file
//! depends on another when a path in it names that module or an item in it: `crate::x…`,
//! `self::…`, `super::…`, or an unqualified `x::…` where `x` is a child module. `mod x;`
//! declarations are not dependencies, so a crate root that only declares and re-exports its
//! modules is the top of the graph; a module naming an item of the root (`crate::f`) depends on
//! it. Comments and string literals are skipped. A leaf: it uses no other module of the crate.
//!
//! Run on any crate with `cargo run -p wa8s-e2e --bin wa8s-modgraph -- <src dir>…`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

/// A module's path from the crate root (`[]` is the root itself).
pub type Module = Vec<String>;

/// Which file modules each file module names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Graph {
    /// `module → modules it depends on` (each module present, possibly with none).
    pub edges: BTreeMap<Module, BTreeSet<Module>>,
}

/// Shows a module as `crate::a::b` (`crate` for the root).
pub fn display(m: &[String]) -> String {
    std::iter::once("crate")
        .chain(m.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("::")
}

impl Graph {
    /// Reads every `.rs` file under `src` (but `src/bin`).
    pub fn of_dir(src: &std::path::Path) -> io::Result<Graph> {
        let mut files = Vec::new();
        collect(src, src, &mut files)?;
        Ok(Graph::of_sources(&files))
    }

    /// The graph of `(module, source text)` pairs.
    pub fn of_sources(files: &[(Module, String)]) -> Graph {
        let known: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
        let parsed: Vec<(&Module, Vec<Path>)> = files
            .iter()
            .map(|(m, text)| (m, paths(&tokens(text))))
            .collect();
        // The names each module imports at its top level (`use a::X;`, `pub use a::X;`): a
        // path through them names the item where it is defined.
        let mut aliases: Aliases = BTreeMap::new();
        for (module, paths) in &parsed {
            for p in paths.iter().filter(|p| p.in_use && p.inline.is_empty()) {
                if let (Some(name), Some(target)) = (
                    p.segments.last(),
                    absolute(&known, module, module, &p.segments),
                ) {
                    aliases
                        .entry((*module).clone())
                        .or_default()
                        .insert(name.clone(), target);
                }
            }
        }
        let mut edges = BTreeMap::new();
        for (module, paths) in parsed {
            let mut deps = BTreeSet::new();
            for p in paths {
                let base: Module = module.iter().cloned().chain(p.inline).collect();
                if let Some(path) = absolute(&known, module, &base, &p.segments) {
                    let target = file_of(&known, &aliases, path, MAX_HOPS);
                    if &target != module {
                        deps.insert(target);
                    }
                }
            }
            edges.insert(module.clone(), deps);
        }
        Graph { edges }
    }

    /// The strongly connected components with more than one module: each is a set of
    /// modules that import each other in a loop. Empty when the graph is acyclic.
    pub fn cycles(&self) -> Vec<Vec<Module>> {
        let mut tarjan = Tarjan {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            next: 0,
            found: Vec::new(),
        };
        for m in self.edges.keys() {
            if !tarjan.index.contains_key(m) {
                tarjan.visit(m);
            }
        }
        let mut found = tarjan.found;
        for c in &mut found {
            c.sort();
        }
        found.sort();
        found
    }

    /// One line per module: `crate::a -> crate::b, crate::c`.
    pub fn render(&self) -> String {
        self.edges
            .iter()
            .map(|(m, deps)| {
                let deps: Vec<String> = deps.iter().map(|d| display(d)).collect();
                format!("{} -> {}\n", display(m), deps.join(", "))
            })
            .collect()
    }
}

struct Tarjan<'g> {
    graph: &'g Graph,
    index: BTreeMap<&'g Module, usize>,
    low: BTreeMap<&'g Module, usize>,
    stack: Vec<&'g Module>,
    on_stack: BTreeSet<&'g Module>,
    next: usize,
    found: Vec<Vec<Module>>,
}

impl<'g> Tarjan<'g> {
    fn visit(&mut self, m: &'g Module) {
        self.index.insert(m, self.next);
        self.low.insert(m, self.next);
        self.next += 1;
        self.stack.push(m);
        self.on_stack.insert(m);
        for d in self.graph.edges.get(m).into_iter().flatten() {
            if !self.index.contains_key(d) {
                self.visit(d);
                let low = self.low[m].min(self.low[d]);
                self.low.insert(m, low);
            } else if self.on_stack.contains(d) {
                let low = self.low[m].min(self.index[d]);
                self.low.insert(m, low);
            }
        }
        if self.low[m] == self.index[m] {
            let mut component = Vec::new();
            while let Some(top) = self.stack.pop() {
                self.on_stack.remove(top);
                component.push(top.clone());
                if top == m {
                    break;
                }
            }
            if component.len() > 1 {
                self.found.push(component);
            }
        }
    }
}

fn collect(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut Vec<(Module, String)>,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if e.file_type()?.is_dir() {
            if !(dir == root && e.file_name() == "bin") {
                collect(root, &path, out)?;
            }
        } else if path.extension().is_some_and(|x| x == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path).with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|l| l == "mod")
                || (module.len() == 1 && (module[0] == "lib" || module[0] == "main"))
            {
                module.pop();
            }
            out.push((module, std::fs::read_to_string(&path)?));
        }
    }
    Ok(())
}

/// A path as written: the inline modules it is in, its segments, whether a `use` declares it.
struct Path {
    inline: Module,
    segments: Vec<String>,
    in_use: bool,
}

/// `module → (imported name → the absolute path it stands for)`.
type Aliases = BTreeMap<Module, BTreeMap<String, Vec<String>>>;

/// How many re-exports a path is followed through (more means a loop of `use`s).
const MAX_HOPS: usize = 8;

/// The absolute path (from the crate root) of `path` written in `module`, inside its inline
/// modules `base`; `None` for paths outside the crate (`std::…`, other crates, locals).
fn absolute(
    known: &BTreeSet<Module>,
    module: &Module,
    base: &Module,
    path: &[String],
) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    match first.as_str() {
        "crate" => Some(rest.to_vec()),
        "self" => Some(base.iter().chain(rest).cloned().collect()),
        "super" => {
            let supers = path.iter().take_while(|s| *s == "super").count();
            let mut m = base.clone();
            m.truncate(m.len().saturating_sub(supers));
            m.extend(path[supers..].iter().cloned());
            Some(m)
        }
        _ => {
            let mut child = module.clone();
            child.push(first.clone());
            known
                .contains(&child)
                .then(|| module.iter().chain(path).cloned().collect())
        }
    }
}

/// The file module that defines what the absolute `path` names: its longest prefix that is a
/// file module, followed through that module's imports when the next segment is one.
fn file_of(known: &BTreeSet<Module>, aliases: &Aliases, path: Vec<String>, hops: usize) -> Module {
    let n = (0..=path.len())
        .rev()
        .find(|n| known.contains(&path[..*n]))
        .unwrap_or(0);
    let module = path[..n].to_vec();
    let imported = path.get(n).and_then(|name| aliases.get(&module)?.get(name));
    match imported {
        Some(target) if hops > 0 && target[..] != path[..=n] => {
            let next = target.iter().chain(&path[n + 1..]).cloned().collect();
            file_of(known, aliases, next, hops - 1)
        }
        _ => module,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

/// Rust tokens, enough for paths: comments, strings and character literals are dropped.
fn tokens(text: &str) -> Vec<Token> {
    let s: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_string(&s, i + 1);
        } else if (c == 'r' || c == 'b') && raw_string_start(&s, i).is_some() {
            let (hashes, open) = raw_string_start(&s, i).unwrap_or_default();
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            i = open + 1;
            while i < s.len() && !s[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
        } else if c == 'b' && next == Some('"') {
            i = skip_string(&s, i + 2);
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if s.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(s[start..i].iter().collect()));
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(match (c, next) {
                (':', Some(':')) => {
                    i += 1;
                    Token::PathSep
                }
                ('{', _) => Token::Open,
                ('}', _) => Token::Close,
                (',', _) => Token::Comma,
                _ => Token::Other,
            });
            i += 1;
        }
    }
    out
}

fn skip_string(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i] != '"' {
        i += if s[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// At `r"`, `r#"`, `br"`, …: the number of `#` and the index of the opening quote.
fn raw_string_start(s: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i + usize::from(s[i] == 'b');
    if s.get(j) != Some(&'r') || (i > 0 && (s[i - 1].is_alphanumeric() || s[i - 1] == '_')) {
        return None;
    }
    j += 1;
    let hashes = s[j..].iter().take_while(|c| **c == '#').count();
    (s.get(j + hashes) == Some(&'"')).then_some((hashes, j + hashes))
}

/// Every path of two or more segments (use-tree groups expanded), with the inline modules
/// (`mod m { … }`) it is written in.
fn paths(tokens: &[Token]) -> Vec<Path> {
    let mut out = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth: usize = 0;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Open => depth += 1,
            Token::Close => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Token::Ident(kw) if kw == "mod" => {
                if let (Some(Token::Ident(name)), Some(Token::Open)) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    inline.push((name.clone(), depth));
                }
            }
            Token::Ident(_)
                if (i == 0 || tokens[i - 1] != Token::PathSep)
                    && tokens.get(i + 1) == Some(&Token::PathSep) =>
            {
                let (trees, end) = use_tree(tokens, i);
                let base: Module = inline.iter().map(|(n, _)| n.clone()).collect();
                let in_use = i > 0 && tokens[i - 1] == Token::Ident("use".into());
                out.extend(trees.into_iter().map(|segments| Path {
                    inline: base.clone(),
                    segments,
                    in_use,
                }));
                // Braces of a use-tree group are not blocks.
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The paths of the use tree (or plain path) starting at `i`, and the index after it.
fn use_tree(tokens: &[Token], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    while let Some(Token::Ident(seg)) = tokens.get(i) {
        prefix.push(seg.clone());
        i += 1;
        if tokens.get(i) != Some(&Token::PathSep) {
            return (vec![prefix], i);
        }
        i += 1;
    }
    if tokens.get(i) != Some(&Token::Open) {
        // `a::*`, `a::<T>`: the path so far.
        return (vec![prefix], i);
    }
    i += 1;
    let mut out = Vec::new();
    while i < tokens.len() && tokens[i] != Token::Close {
        if tokens[i] == Token::Comma {
            i += 1;
            continue;
        }
        let (inner, end) = use_tree(tokens, i);
        for p in inner {
            let p = if p.first().is_some_and(|s| s == "self") {
                &p[1..]
            } else {
                &p[..]
            };
            out.push(prefix.iter().chain(p).cloned().collect());
        }
        // Skip what the tree does not consume (`as x`, `*`).
        i = end.max(i + 1);
        while i < tokens.len() && !matches!(tokens[i], Token::Comma | Token::Close) {
            i += 1;
        }
    }
    if out.is_empty() {
        out.push(prefix);
    }
    (out, i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &str) -> Module {
        path.split("::")
            .filter(|s| !s.is_empty() && *s != "crate")
            .map(String::from)
            .collect()
    }

    fn graph(files: &[(&str, &str)]) -> Graph {
        let files: Vec<(Module, String)> =
            files.iter().map(|(p, t)| (m(p), (*t).to_owned())).collect();
        Graph::of_sources(&files)
    }

    fn deps(g: &Graph, of: &str) -> Vec<String> {
        g.edges[&m(of)].iter().map(|d| display(d)).collect()
    }

    #[test]
    fn use_groups_inline_paths_self_and_super_are_dependencies() {
        let g = graph(&[
            ("crate", "mod a; mod b; mod net; pub use a::A;"),
            (
                "a",
                "use crate::{b::{self, B}, net::address as x};\nfn f() { super::b::g(); }",
            ),
            ("b", "fn g() { crate::net::lookup::resolve(); }"),
            ("net", "mod address; mod lookup;"),
            ("net::address", "use super::lookup::Resolver;"),
            ("net::lookup", "fn f() { self::inner(); }"),
        ]);
        assert_eq!(deps(&g, "crate"), ["crate::a"]);
        assert_eq!(deps(&g, "a"), ["crate::b", "crate::net::address"]);
        assert_eq!(deps(&g, "b"), ["crate::net::lookup"]);
        assert_eq!(deps(&g, "net"), Vec::<String>::new());
        assert_eq!(deps(&g, "net::address"), ["crate::net::lookup"]);
        assert!(g.cycles().is_empty());
    }

    #[test]
    fn comments_strings_and_test_modules_naming_their_own_file_are_not_dependencies() {
        let g = graph(&[
            ("crate", "mod a; mod b;"),
            (
                "a",
                "/// See [`crate::b::x`].\n// crate::b\n/* crate::b /* nested */ crate::b */\n\
                 const S: &str = \"crate::b\"; const R: &str = r#\"crate::b \"x\"\"#;\n\
                 const C: char = '\"'; fn f<'a>(x: &'a str) {}\n\
                 #[cfg(test)] mod tests { use super::*; }",
            ),
            ("b", ""),
        ]);
        assert_eq!(deps(&g, "a"), Vec::<String>::new());
    }

    #[test]
    fn a_module_naming_an_item_of_the_root_that_re_exports_it_is_a_cycle() {
        let g = graph(&[
            ("crate", "mod a; mod b; pub use b::B; pub fn root() {}"),
            ("a", "use crate::b::B;"),
            ("b", "fn f() { crate::root(); }"),
        ]);
        assert_eq!(g.cycles(), vec![vec![m("crate"), m("b")]]);
    }

    #[test]
    fn an_item_named_through_a_re_export_is_a_dependency_on_the_module_defining_it() {
        let g = graph(&[
            ("crate", "mod a; mod b; mod net; pub use net::Policy;"),
            ("a", "fn f(p: crate::Policy) {}"),
            (
                "b",
                "use crate::Policy as P;\nfn g() { crate::net::Policy::new(); }",
            ),
            ("net", "mod policy; pub use policy::Policy;"),
            ("net::policy", "pub struct Policy;"),
        ]);
        assert_eq!(deps(&g, "a"), ["crate::net::policy"]);
        assert_eq!(deps(&g, "b"), ["crate::net::policy"]);
        assert_eq!(deps(&g, "crate"), ["crate::net::policy"]);
        assert!(g.cycles().is_empty());
    }

    #[test]
    fn modules_importing_each_other_through_a_third_are_one_cycle() {
        let g = graph(&[
            ("crate", "mod a; mod b; mod c; mod d;"),
            ("a", "use crate::b;"),
            ("b", "use crate::c::X;"),
            ("c", "fn f() { crate::a::g(); crate::d::h(); }"),
            ("d", ""),
        ]);
        assert_eq!(g.cycles(), vec![vec![m("a"), m("b"), m("c")]]);
    }

    #[test]
    fn the_e2e_harness_modules_import_each_other_without_a_cycle() {
        assert_acyclic("e2e/src");
    }

    #[test]
    fn the_wasm_hosts_modules_import_each_other_without_a_cycle() {
        assert_acyclic("shim/host/src");
    }

    /// `dir` (from the repository root) has modules and no import cycle among them.
    fn assert_acyclic(dir: &str) {
        let src = crate::paths::repo_root().join(dir);
        let g = Graph::of_dir(&src).unwrap_or_else(|e| panic!("reading {dir}: {e}"));
        assert!(g.edges.len() > 10, "{}", g.render());
        let cycles = g.cycles();
        assert!(
            cycles.is_empty(),
            "cycles among {dir} modules: {cycles:?}\n{}",
            g.render()
        );
    }
}
