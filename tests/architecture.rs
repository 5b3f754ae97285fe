//! The house rules of `docs/ARCHITECTURE.md`, checked on the source:
//!
//! 1. every path the page names exists;
//! 2. no import circle between the modules (files) of `src/`, `core/src/`,
//!    `loadgen/src/` and `coalesce/src/`: a module may use its ancestors
//!    (`super::`), but two modules never use each other, directly or
//!    through others;
//! 3. no function in `src/` or `core/src/` is longer than 80 lines, unless
//!    its doc comment says it is a flat table (and why).
//!
//! The source is read with `syn`, so comments and strings never count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The package's directory, read when the test runs (not when it was
/// compiled: a build cache shared between checkouts would point it at
/// another one).
fn package() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
const MAX_FN_LINES: usize = 80;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).unwrap();
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `attrs` hold `#[cfg(test)]`: test code is not the house.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

// ------------------------------------------------------------------ paths

#[test]
fn every_path_the_architecture_page_names_exists() {
    let page = std::fs::read_to_string(package().join("docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md");
    let mut named = 0;
    for span in page.split('`').skip(1).step_by(2) {
        let path = span
            .split("::")
            .next()
            .unwrap_or("")
            .trim_end_matches(['/', ':']);
        let looks_like_path = [
            "src/",
            "core/",
            "loadgen/",
            "coalesce/",
            "tests/",
            "benches/",
            "fuzz/",
            "scripts/",
            "docs/",
        ]
        .iter()
        .any(|top| path.starts_with(top))
            && !path.contains(' ')
            && !path.contains('*');
        if looks_like_path {
            named += 1;
            assert!(
                package().join(path).exists(),
                "docs/ARCHITECTURE.md names `{path}`, which does not exist"
            );
        }
    }
    assert!(named > 20, "the page names only {named} paths");
}

// ------------------------------------------------------------- no circles

/// The module path of a file of a crate whose source root is `root`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The paths a file refers to (`crate::`, `super::`, `self::`), resolved
/// to absolute module paths, outside test code.
struct References {
    module: Vec<String>,
    /// Inline modules entered (`mod x { ... }`), below `module`.
    inline: Vec<String>,
    found: BTreeSet<Vec<String>>,
}

impl References {
    fn resolve(&mut self, segments: &[String]) {
        let mut here: Vec<String> = self.module.iter().chain(&self.inline).cloned().collect();
        let rest = match segments.first().map(String::as_str) {
            Some("crate") => {
                here.clear();
                &segments[1..]
            }
            Some("super") => {
                let mut rest = segments;
                while rest.first().map(String::as_str) == Some("super") {
                    here.pop();
                    rest = &rest[1..];
                }
                rest
            }
            Some("self") => &segments[1..],
            _ => return,
        };
        here.extend(rest.iter().cloned());
        self.found.insert(here);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.resolve(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.resolve(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.resolve(prefix),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix, t)),
        }
    }
}

impl<'ast> Visit<'ast> for References {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if is_test(&item.attrs) {
            return;
        }
        self.inline.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.inline.pop();
    }
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if !is_test(&item.attrs) {
            self.use_tree(&mut Vec::new(), &item.tree);
        }
    }
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.resolve(&segments);
        syn::visit::visit_path(self, path);
    }
}

/// The file-level module graph of the crate at `root`: each module to the
/// modules it uses (not counting its ancestors and descendants).
fn module_graph(root: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = rust_files(root);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(root, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(root, file);
        let mut refs = References {
            module: module.clone(),
            inline: Vec::new(),
            found: BTreeSet::new(),
        };
        refs.visit_file(&parse(file));
        let uses: BTreeSet<Vec<String>> = refs
            .found
            .iter()
            .filter_map(|path| {
                (0..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|prefix| modules.contains(prefix))
            })
            .filter(|used| !used.starts_with(&module) && !module.starts_with(used))
            .collect();
        graph.insert(module, uses);
    }
    graph
}

/// The circles of `graph`: its strongly connected parts of two or more.
fn circles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    let names: Vec<&Vec<String>> = graph.keys().collect();
    let reach = |from: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(m) = stack.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&Vec<String>, BTreeSet<Vec<String>>> =
        names.iter().map(|m| (*m, reach(m))).collect();
    let mut found = BTreeSet::new();
    for m in &names {
        let circle: Vec<String> = names
            .iter()
            .filter(|o| reachable[m].contains(**o) && reachable[**o].contains(*m))
            .map(|o| o.join("::"))
            .collect();
        if circle.len() > 1 {
            found.insert(circle);
        }
    }
    found.into_iter().collect()
}

#[test]
fn no_import_circles() {
    for root in ["src", "core/src", "loadgen/src", "coalesce/src"] {
        let graph = module_graph(&package().join(root));
        assert!(
            graph.len() > 1 || root == "coalesce/src",
            "{root}: no modules found"
        );
        let found = circles(&graph);
        assert!(found.is_empty(), "{root}: import circles {found:?}");
    }
}

/// `src/server.rs` is the composition root: it builds everything, and
/// nothing in the library builds on it (the binary calls it from outside).
#[test]
fn nothing_imports_the_composition_root() {
    let graph = module_graph(&package().join("src"));
    let root = vec!["server".to_owned()];
    assert!(graph.contains_key(&root), "src/server.rs is gone");
    let users: Vec<String> = graph
        .iter()
        .filter(|(_, uses)| uses.contains(&root))
        .map(|(module, _)| module.join("::"))
        .collect();
    assert!(users.is_empty(), "modules import crate::server: {users:?}");
}

/// Session bindings are written in one place, `Bindings::bind` in
/// `src/sessions/mod.rs`, which checks the MNO pools and the cap.
#[test]
fn only_sessions_writes_bindings() {
    const WRITES: [&str; 5] = [
        "bind_session",
        "unbind",
        "unbind_session",
        "unbind_subscriber",
        "sweep",
    ];
    struct Calls(Vec<String>);
    impl<'ast> Visit<'ast> for Calls {
        fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
            if !is_test(&item.attrs) {
                syn::visit::visit_item_mod(self, item);
            }
        }
        fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
            // `bind_session` on anything; a removal on the table itself
            // (`….table().unbind(…)`), not on the Bindings that keep it.
            let on_table =
                matches!(&*call.receiver, syn::Expr::MethodCall(inner) if inner.method == "table");
            let method = call.method.to_string();
            if method == "bind_session" || (on_table && WRITES.contains(&method.as_str())) {
                self.0.push(method);
            }
            syn::visit::visit_expr_method_call(self, call);
        }
    }
    let src = package().join("src");
    for file in rust_files(&src) {
        let mut calls = Calls(Vec::new());
        calls.visit_file(&parse(&file));
        let allowed = file.ends_with("src/sessions/mod.rs");
        assert!(
            allowed || calls.0.is_empty(),
            "{} writes session bindings itself ({:?}); go through sessions::Bindings",
            file.display(),
            calls.0
        );
    }
}

/// The code table is read on an authority (`store::index::Reader`): a
/// peer only on the federation listener, the operator only on the admin
/// API and the export it streams. (A client shows its `Permit`, which only
/// the core makes.)
#[test]
fn code_readers_are_named_only_where_they_are_checked() {
    struct Named(BTreeSet<String>);
    impl<'ast> Visit<'ast> for Named {
        fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
            if !is_test(&item.attrs) {
                syn::visit::visit_item_mod(self, item);
            }
        }
        fn visit_path(&mut self, path: &'ast syn::Path) {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            if let [.., reader, kind] = segments.as_slice()
                && reader == "Reader"
            {
                self.0.insert(kind.clone());
            }
            syn::visit::visit_path(self, path);
        }
    }
    let allowed: &[(&str, &[&str])] = &[
        ("src/net/federation.rs", &["Peer"]),
        ("src/net/admin.rs", &["Operator"]),
        ("src/codes.rs", &["Operator"]),
    ];
    let src = package().join("src");
    let mut seen = 0;
    for file in rust_files(&src) {
        let mut named = Named(BTreeSet::new());
        named.visit_file(&parse(&file));
        if file.ends_with("src/store/index/mod.rs") {
            continue; // where Reader is declared
        }
        let ok: &[&str] = allowed
            .iter()
            .find(|(path, _)| file.ends_with(path))
            .map_or(&[], |(_, kinds)| kinds);
        for kind in &named.0 {
            seen += 1;
            assert!(
                ok.contains(&kind.as_str()),
                "{} reads codes as Reader::{kind}; only {allowed:?} may",
                file.display()
            );
        }
    }
    assert!(seen >= 3, "no code reader named: is Reader gone?");
}

#[test]
fn the_circle_finder_finds_circles() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let graph = BTreeMap::from([
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("c")])),
        (m("c"), BTreeSet::from([m("a")])),
        (m("d"), BTreeSet::from([m("a")])),
    ]);
    assert_eq!(circles(&graph), vec![vec!["a", "b", "c"]]);
}

// -------------------------------------------------------- function length

/// Functions longer than the limit, with their length.
struct Long {
    file: PathBuf,
    found: Vec<String>,
}

impl Long {
    fn check(&mut self, name: &syn::Ident, attrs: &[syn::Attribute], span: proc_macro2::Span) {
        let lines = span.end().line - span.start().line + 1;
        let table = attrs
            .iter()
            .any(|a| doc_text(a).to_lowercase().contains("flat table"));
        if lines > MAX_FN_LINES && !table {
            self.found.push(format!(
                "{}:{} {name} is {lines} lines",
                self.file.display(),
                span.start().line
            ));
        }
    }
}

/// The text of a doc comment line (`#[doc = "..."]`); empty for any other
/// attribute.
fn doc_text(attr: &syn::Attribute) -> String {
    match &attr.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => s.value(),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

impl<'ast> Visit<'ast> for Long {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        use syn::spanned::Spanned;
        self.check(&item.sig.ident, &item.attrs, item.span());
        syn::visit::visit_item_fn(self, item);
    }
    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        use syn::spanned::Spanned;
        self.check(&item.sig.ident, &item.attrs, item.span());
        syn::visit::visit_impl_item_fn(self, item);
    }
    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        use syn::spanned::Spanned;
        if item.default.is_some() {
            self.check(&item.sig.ident, &item.attrs, item.span());
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

#[test]
fn no_function_over_80_lines() {
    let mut long = Vec::new();
    for root in ["src", "core/src"] {
        for file in rust_files(&package().join(root)) {
            let mut visitor = Long {
                file: file.strip_prefix(package()).unwrap().to_owned(),
                found: Vec::new(),
            };
            visitor.visit_file(&parse(&file));
            long.extend(visitor.found);
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them, or say in the doc comment that one is a flat table):\n{}",
        long.join("\n")
    );
}
