//! The architecture test: dependencies between the library's top-level modules point
//! one way, down the declared layer order (ARCHITECTURE.md). It reads every source
//! file under `src/` and fails when a module names (`crate::x…`, in a `use` or
//! inline) a module above it, which is also what rules out cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom to top: a module may use only modules listed before it.
const LAYERS: &[&str] = &[
    "lifetime", // lifetime arithmetic: no dependencies
    "config",   // the typed configuration
    "web",      // HTTP vocabulary: bodies, headers, cookies, refusals, client
    "session",  // sessions: identity, tokens, tickets, storage, lifetime policy
    "metrics",  // Prometheus metrics (observes session events)
    "hooks",    // calls into the backend on session events
    "agent",    // the browser agent and the gateway's own pages
    "inject",   // streaming agent-tag injection into HTML
    "net",      // listeners, connections, TLS
    "context",  // the per-request context every route finishes through
    "reserved", // the reserved endpoints and the bootstrap protocol
    "proxy",    // the request path
    "admin",    // the admin listener
    "server",   // wiring
    "demo",     // the bundled demo app
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None`: the crate root or the
/// binary).
fn owner(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Every `crate::name` a line of code names (comments are skipped: doc links are
/// not dependencies).
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn top_level_modules_only_depend_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 20, "expected the crate's sources under src/");

    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut unknown = Vec::new();
    let mut upward = Vec::new();
    for file in &files {
        let Some(module) = owner(&src, file) else {
            continue;
        };
        let Some(own_rank) = rank(&module) else {
            unknown.push(module);
            continue;
        };
        let text = fs::read_to_string(file).expect("source is UTF-8");
        for used in named_modules(&text) {
            if used == module {
                continue;
            }
            let Some(used_rank) = rank(&used) else {
                unknown.push(used);
                continue;
            };
            edges
                .entry(module.clone())
                .or_default()
                .insert(used.clone());
            if used_rank > own_rank {
                let shown = file.strip_prefix(&src).unwrap_or(file).display();
                upward.push(format!("{shown}: {module} uses {used}, which is above it"));
            }
        }
    }

    println!("layer order (bottom to top) and what each module uses:");
    for module in LAYERS {
        let uses: Vec<_> = edges.get(*module).into_iter().flatten().cloned().collect();
        println!("  {module:<9} -> {}", uses.join(", "));
    }
    let cycles = count_cycles(&edges);
    println!(
        "{} upward imports, {} cycles among top-level modules",
        upward.len(),
        cycles
    );
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS: {unknown:?} (add each where it belongs)"
    );
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
    assert_eq!(cycles, 0);
}

/// How many modules sit on a dependency cycle (a module that reaches itself); with
/// a dozen modules, plain reachability is enough.
fn count_cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> usize {
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(module) = stack.pop() {
            for next in edges.get(&module).into_iter().flatten() {
                if next == to {
                    return true;
                }
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        false
    };
    let mut in_cycle = BTreeSet::new();
    for (module, uses) in edges {
        for used in uses {
            if reaches(used, module) {
                in_cycle.insert(module.clone());
            }
        }
    }
    in_cycle.len()
}

#[test]
fn the_scanner_sees_inline_paths_and_skips_comments() {
    let text = "use crate::web::body;\n// crate::proxy in a comment\nlet x = crate::session::Handle::nil(); // crate::demo\n";
    let found: Vec<_> = named_modules(text).into_iter().collect();
    assert_eq!(found, ["session", "web"]);
}
