//! The portal's pages (`www/`, served as they are): every local link leads to a page that
//! exists, and every `#fragment` to an element with that id, so the "attack it" links and the
//! security cards' anchors cannot rot.

use std::collections::HashMap;
use std::path::PathBuf;

/// The values of every `attr="…"` in `html`.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&needle) {
        let after = &rest[at + needle.len()..];
        let end = after.find('"').unwrap_or(after.len());
        out.push(&after[..end]);
        rest = &after[end..];
    }
    out
}

#[test]
fn every_local_link_and_anchor_exists() {
    let www = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../www");
    let pages: HashMap<String, String> = std::fs::read_dir(&www)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".html"))
        .map(|n| {
            let text = std::fs::read_to_string(www.join(&n)).unwrap();
            (n, text)
        })
        .collect();
    assert!(
        pages.contains_key("security.html"),
        "the security cards' page"
    );
    let mut checked = 0;
    for (name, html) in &pages {
        for href in attribute_values(html, "href") {
            if href.contains("://") || href.ends_with(".css") || href.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = href.split_once('#').unwrap_or((href, ""));
            let file = match file {
                "" => name.as_str(),
                "./" => "index.html",
                f => f,
            };
            let target = pages
                .get(file)
                .unwrap_or_else(|| panic!("{name} links to {href}: no such page"));
            if !fragment.is_empty() {
                assert!(
                    attribute_values(target, "id").contains(&fragment),
                    "{name} links to {href}: {file} has no id {fragment:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} links checked");
}
