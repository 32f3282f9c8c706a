//! The engine's layers point down only (`docs/architecture.md`): each module of
//! `src/` may name, through `crate::`, only modules of lower layers (or its own). Test
//! modules (`#[cfg(test)] mod ...` at the end of a file) may reach further up.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Layers, lowest first; a module may use those of a strictly lower rank.
const LAYERS: &[(&str, u32)] = &[
    ("units", 0),
    ("error", 0),
    ("events", 0),
    ("telemetry", 1),
    ("layout", 2),
    ("ondisk", 3),
    ("member", 4),
    ("testing", 5),
    ("meta", 6),
    ("data", 7),
    ("txg", 8),
    ("jobs", 9),
    ("array", 10),
];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file without its test module and without comments.
fn code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod ").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::NAME` in `code`, and the names inside `use crate::{A, B::..}`.
fn crate_refs(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let close = group.find('}').unwrap_or(group.len());
            for item in group[..close].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

#[test]
fn layers_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let mine = rank(&module).unwrap_or_else(|| panic!("{module} is in no layer"));
        seen += 1;
        let text = code(&fs::read_to_string(f).unwrap());
        for r in crate_refs(&text) {
            let Some(theirs) = rank(&r) else {
                // Items re-exported at the crate root (`crate::Array`, ...) belong to the
                // façade: only the façade may name them.
                if module != "array" && !r.is_empty() {
                    wrong.entry(rel.display().to_string()).or_default().push(r);
                }
                continue;
            };
            if r != module && theirs >= mine {
                wrong.entry(rel.display().to_string()).or_default().push(r);
            }
        }
        if module != "array" && text.contains("Array::") {
            wrong
                .entry(rel.display().to_string())
                .or_default()
                .push("Array".into());
        }
    }
    assert!(
        seen > 30,
        "only {seen} files read: is the layout as this test expects?"
    );
    assert!(
        wrong.is_empty(),
        "modules naming a layer that is not below them: {wrong:#?}"
    );
}

#[test]
fn the_reference_scanner_sees_groups_and_paths() {
    let refs = crate_refs("use crate::{meta::Meta, units};\nlet x = crate::data::f();");
    assert_eq!(refs, ["meta", "units", "data"]);
    assert_eq!(
        code("use a;\n// crate::x\n#[cfg(test)]\nmod tests { crate::y }"),
        "use a;"
    );
}
