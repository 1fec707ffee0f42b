//! The crate's modules depend on one another without a loop: the shared
//! state (`app`) and what it holds depend on no handler, and the handlers
//! depend on it. Read from the sources: every `crate::MODULE` path, in `use`
//! lines and inline alike (comments skipped); the queue's submodules by
//! their `super::MODULE` paths.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The identifiers that follow `prefix` in `code`, `prefix{a, b::c}` included.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                found.extend(group.split(',').map(|p| ident(p.trim())));
            }
            None => found.push(ident(rest)),
        }
    }
    found
}

fn code_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default().to_owned())
        .collect()
}

fn graph(dir: &Path, prefix: &str, skip: &[&str]) -> Graph {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut graph = Graph::new();
    for path in &files {
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let mut deps = BTreeSet::new();
        let mut sources = vec![path.clone()];
        if path.is_dir() {
            sources = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
        } else if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        for source in sources {
            for line in code_lines(&source) {
                deps.extend(paths_after(&line, prefix));
            }
        }
        deps.remove(&name);
        graph.insert(name, deps);
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// A loop, if there is one, as the modules along it.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut found = path[at..].to_vec();
            found.push(m.to_owned());
            return Some(found);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for d in &graph[m] {
            if let Some(c) = visit(graph, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(graph, m, &mut Vec::new(), &mut done))
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_crates_modules_have_no_loop() {
    let modules = graph(&src(), "crate::", &["lib"]);
    assert!(modules.len() > 10, "{modules:?}");
    for (m, deps) in &modules {
        println!("{m} -> {deps:?}");
    }
    assert_eq!(cycle(&modules), None);
}

#[test]
fn the_shared_state_imports_no_handler() {
    let modules = graph(&src(), "crate::", &["lib"]);
    for handler in [
        "api", "pages", "relay", "webhook", "outbox", "dispatch", "resolve", "routes", "serve",
    ] {
        assert!(
            !modules["app"].contains(handler),
            "app imports {handler}: {:?}",
            modules["app"]
        );
    }
}

#[test]
fn the_queues_parts_have_no_loop() {
    let parts = graph(&src().join("queue"), "super::", &["mod"]);
    assert!(parts.len() > 5, "{parts:?}");
    for (m, deps) in &parts {
        println!("queue::{m} -> {deps:?}");
    }
    assert_eq!(cycle(&parts), None);
}

#[test]
fn a_loop_is_seen() {
    let graph: Graph = [("a", "b"), ("b", "a"), ("c", "a")]
        .into_iter()
        .map(|(m, d)| (m.to_owned(), BTreeSet::from([d.to_owned()])))
        .collect();
    assert!(cycle(&graph).is_some());
    assert_eq!(
        paths_after("use crate::{app::App, queue};", "crate::"),
        ["app", "queue"]
    );
}
