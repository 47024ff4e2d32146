//! The daemon's top-level modules import each other without cycles, and `stream` imports
//! none of them: read from the sources (`crate::<module>` paths in each file of
//! `daemon/src/<module>...`), so `cargo test -p detingest-daemon --test module_graph` checks
//! it anywhere, without extra tools.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its files name as `crate::<module>`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_owned();
            if matches!(module.as_str(), "lib" | "main" | "report" | "filter_files") {
                continue; // the crate root and the binary's own modules
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let uses = graph.entry(module.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let name: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn daemon_modules_import_each_other_without_cycles() {
    let graph = imports();
    for module in [
        "stream", "check", "config", "source", "sink", "pipeline", "runs", "control", "metrics",
        "contract",
    ] {
        assert!(graph.contains_key(module), "no module {module}: {graph:?}");
    }
    assert_eq!(find_cycle(&graph), None, "import graph: {graph:#?}");
    for leaf in ["stream", "check", "contract", "rate_limit", "dectris"] {
        assert!(
            graph[leaf].is_empty(),
            "{leaf} must use no other daemon module: {:?}",
            graph[leaf]
        );
    }
    // `/metrics` reads the typed contracts only.
    let metrics: Vec<&str> = graph["metrics"].iter().map(String::as_str).collect();
    assert_eq!(metrics, ["contract"], "metrics must use only contract");
    for component in ["source", "sink", "cluster", "quality"] {
        for forbidden in ["config", "pipeline", "runs", "control"] {
            assert!(
                !graph[component].contains(forbidden),
                "{component} must not use {forbidden}: {:?}",
                graph[component]
            );
        }
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    g.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}
