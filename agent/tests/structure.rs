//! The shape of the source, checked (STYLE.md habits 9 and 11): the graph of a crate's top-level
//! modules flows one way, and no function is longer than [`MAX_FN_LINES`].
//!
//! Files are parsed with `syn`, walking the module tree from each crate root along its `mod`
//! declarations, so test code is left out the way the compiler leaves it out: a `#[cfg(test)]`
//! module (inline or in its own file) and a `#[cfg(test)]` or `#[test]` item are not read. An edge
//! `a -> b` is a path `crate::b::…` (or, in the crate root, `b::…`; or `super::…` reaching the
//! root) anywhere in module `a`'s files, in code or inside a macro's tokens; a submodule file such
//! as `config/admin.rs` counts as its top-level module, and items of the crate root itself are
//! the node `lib`. Doc links are not edges.
//!
//! Run `cargo test -p flyte-auth-agent --test structure -- --nocapture` to see the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::spanned::Spanned as _;
use syn::visit::Visit;

/// The source directories checked, relative to the workspace root, each a crate's `src`.
const SOURCE_DIRS: &[&str] = &["agent/src", "injector/src", "proto/src"];

/// The longest function allowed, in lines from its signature to its closing brace.
const MAX_FN_LINES: usize = 80;

/// The node standing for the crate root's own items (`crate::Agent`).
const ROOT: &str = "lib";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the agent crate sits in the workspace")
        .to_path_buf()
}

/// One parsed, non-test source file of a crate.
struct SourceFile {
    /// Path relative to the workspace root, for messages.
    display: String,
    /// The module path of the file (`[]` for a crate root, `["config", "admin"]`).
    module: Vec<String>,
    ast: syn::File,
}

/// Whether `attrs` hold `#[cfg(test)]` or `#[test]`: code the compiler only builds for tests.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("test")
            || (a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
    })
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

/// The files of the crate rooted at `root_file`, following non-test `mod name;` declarations.
fn crate_files(root: &Path, root_file: &Path) -> Vec<SourceFile> {
    let mut out = Vec::new();
    // (file, its module path, the directory its child modules live in)
    let mut queue = vec![(
        root_file.to_path_buf(),
        Vec::new(),
        root_file.parent().unwrap().to_path_buf(),
    )];
    while let Some((path, module, child_dir)) = queue.pop() {
        let ast = parse(&path);
        let mut declared = Vec::new();
        collect_mod_decls(&ast.items, &mut Vec::new(), &mut declared);
        for (inline_path, name) in declared {
            let mut dir = child_dir.clone();
            dir.extend(&inline_path);
            let file = [
                dir.join(format!("{name}.rs")),
                dir.join(&name).join("mod.rs"),
            ]
            .into_iter()
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no file for mod {name} declared in {}", path.display()));
            let mut child = module.clone();
            child.extend(inline_path.iter().cloned());
            child.push(name.clone());
            let grandchild_dir = if file.ends_with("mod.rs") {
                file.parent().unwrap().to_path_buf()
            } else {
                dir.join(&name)
            };
            queue.push((file, child, grandchild_dir));
        }
        let display = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        out.push(SourceFile {
            display,
            module,
            ast,
        });
    }
    out.sort_by(|a, b| a.display.cmp(&b.display));
    out
}

/// Non-test `mod name;` declarations in `items`, with the inline modules they sit in.
fn collect_mod_decls(
    items: &[syn::Item],
    inline: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) {
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        if is_test(&m.attrs) {
            continue;
        }
        match &m.content {
            None => out.push((inline.clone(), m.ident.to_string())),
            Some((_, items)) => {
                inline.push(m.ident.to_string());
                collect_mod_decls(items, inline, out);
                inline.pop();
            }
        }
    }
}

/// Collects the top-level modules one file refers to.
struct References<'a> {
    /// The module path of the scope being read (the file's, plus inline modules entered).
    scope: Vec<String>,
    /// The crate's top-level module names.
    modules: &'a BTreeSet<String>,
    found: BTreeSet<String>,
}

impl References<'_> {
    /// Records the top-level module a path with these leading segments points into, if any.
    fn path(&mut self, segments: &[String]) {
        let mut at: Vec<String> = match segments.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("super") | Some("self") => self.scope.clone(),
            // A bare first segment names a module only in the crate root (elsewhere it is an
            // extern crate, a local item or a prelude name).
            Some(first) if self.scope.is_empty() && self.modules.contains(first) => {
                self.found.insert(first.to_string());
                return;
            }
            _ => return,
        };
        let mut rest = match segments.first().map(String::as_str) {
            Some("crate") => &segments[1..],
            _ => segments,
        };
        while let Some(first) = rest.first() {
            match first.as_str() {
                "super" => {
                    at.pop();
                }
                "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
        let target = match at.first() {
            Some(top) => top.clone(),
            None => match rest.first() {
                Some(name) if self.modules.contains(name) => name.clone(),
                Some(_) => ROOT.to_string(),
                None => return,
            },
        };
        self.found.insert(target);
    }

    /// `crate :: name` and `super :: name` sequences inside a macro's tokens.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, token) in tokens.iter().enumerate() {
            match token {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if id == "crate" || id == "super" => {
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) =
                        (tokens.get(j), tokens.get(j + 1))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        let Some(TokenTree::Ident(next)) = tokens.get(j + 2) else {
                            break;
                        };
                        segments.push(next.to_string());
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.path(&segments);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Every path a `use` tree spells out, as segment lists.
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => out.push([prefix.clone(), vec![n.ident.to_string()]].concat()),
        syn::UseTree::Rename(r) => out.push([prefix.clone(), vec![r.ident.to_string()]].concat()),
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for References<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.scope.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.scope.pop();
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut paths = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut paths);
        for p in paths {
            self.path(&p);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1 {
            self.path(&segments);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// The library crate of `src`: its top-level module graph (self-edges left out).
fn module_graph(root: &Path, src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = crate_files(root, &src.join("lib.rs"));
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.module.first().cloned())
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let node = file.module.first().cloned().unwrap_or_else(|| ROOT.into());
        let mut refs = References {
            scope: file.module.clone(),
            modules: &modules,
            found: BTreeSet::new(),
        };
        refs.visit_file(&file.ast);
        refs.found.remove(&node);
        graph.entry(node).or_default().extend(refs.found);
    }
    graph
}

/// A cycle of `graph`, if it has one, as the nodes along it with the first repeated at the end.
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
                let start = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[start..].to_vec();
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
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let root = workspace_root();
    for dir in SOURCE_DIRS {
        let graph = module_graph(&root, &root.join(dir));
        println!("{dir}:");
        for (node, edges) in &graph {
            let edges: Vec<&str> = edges.iter().map(String::as_str).collect();
            println!("  {node} -> {}", edges.join(", "));
        }
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "{dir}: the modules form a cycle: {}\n(a -> b: a file of a names crate::b)",
                cycle.join(" -> ")
            );
        }
    }
}

/// Records every function (free, inherent, trait default) longer than [`MAX_FN_LINES`].
struct LongFunctions<'a> {
    file: &'a str,
    found: Vec<String>,
}

impl LongFunctions<'_> {
    fn check(&mut self, name: &syn::Ident, sig: &syn::Signature, body: &syn::Block) {
        let start = sig.span().start().line;
        let end = body.brace_token.span.close().end().line;
        let lines = end + 1 - start;
        if lines > MAX_FN_LINES {
            self.found
                .push(format!("{}:{start} fn {name}: {lines} lines", self.file));
        }
    }
}

impl<'ast> Visit<'ast> for LongFunctions<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if !is_test(&i.attrs) {
            syn::visit::visit_item_impl(self, i);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test(&f.attrs) {
            self.check(&f.sig.ident, &f.sig, &f.block);
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            self.check(&f.sig.ident, &f.sig, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let (false, Some(body)) = (is_test(&f.attrs), &f.default) {
            self.check(&f.sig.ident, &f.sig, body);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

#[test]
fn no_function_is_longer_than_the_limit() {
    let root = workspace_root();
    let mut found = Vec::new();
    for dir in SOURCE_DIRS {
        let src = root.join(dir);
        // The library and the binary are two crates; both are read.
        for crate_root in ["lib.rs", "main.rs"].map(|f| src.join(f)) {
            if !crate_root.exists() {
                continue;
            }
            for file in crate_files(&root, &crate_root) {
                let mut v = LongFunctions {
                    file: &file.display,
                    found: Vec::new(),
                };
                v.visit_file(&file.ast);
                found.extend(v.found);
            }
        }
    }
    found.sort();
    found.dedup();
    assert!(
        found.is_empty(),
        "functions longer than {MAX_FN_LINES} lines (name their parts):\n  {}",
        found.join("\n  ")
    );
}
