//! The client's modules import downwards only (ARCHITECTURE.md): `error`, `device`, `context`,
//! then the schemes (which do not import one another), `session`, and `web`. Read from the
//! sources, so that a new import that closes a circle fails here rather than in review.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module's layer; modules of one layer may not import one another.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("device", 1),
    ("context", 2),
    ("flow_rotation", 3),
    ("owsd", 3),
    ("adversarial", 3),
    ("session", 4),
    ("web", 5),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the client's sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules that `text` names as `crate::<module>`.
fn imported(text: &str) -> BTreeSet<String> {
    text.match_indices("crate::")
        .map(|(i, _)| {
            text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn client_modules_import_downwards_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let module = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_owned())
            .expect("a module name");
        if module == "lib" {
            continue;
        }
        let own = layer(&module)
            .unwrap_or_else(|| panic!("{} is not in LAYERS: give it a layer", rel.display()));
        let text = std::fs::read_to_string(file).expect("a source file");
        for other in imported(&text) {
            if other == module {
                continue;
            }
            let theirs = layer(&other).unwrap_or_else(|| {
                panic!(
                    "{} names crate::{other}, which is not in LAYERS",
                    rel.display()
                )
            });
            checked += 1;
            if theirs >= own {
                wrong.push(format!(
                    "{} ({own}) imports {other} ({theirs})",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that go sideways or up: {wrong:#?}"
    );
    // The check saw the imports it is about (the schemes use the context; session uses them).
    assert!(checked >= 10, "only {checked} imports were checked");
}

#[test]
fn the_layer_check_sees_a_circle() {
    // A scheme that named the session would be reported.
    let names = imported("use crate::session::Session;\nlet x = crate::device::read_vec;");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["device", "session"]);
    assert!(layer("session") > layer("owsd"));
}
