//! docs/architecture.md must keep up with the code: it names every module
//! of `vmm/src` (each top-level module of `lib.rs` and each module one
//! level below it) and every seccomp thread kind. Both lists are read from
//! the source at test time, so a module or thread kind added, moved or
//! renamed without its line in the architecture page fails this test,
//! which names what is missing.
//!
//! A module counts as named when the page holds its path in backticks:
//! `` `storage` `` for a top-level module, `` `storage::luks` `` for one
//! below it. A thread kind counts when the page holds its variant name in
//! backticks (`` `Vcpu` ``). Test-only modules (`tests`, `*_tests`,
//! `test_support`, or anything under `#[cfg(test)]`) are exempt.
//!
//! It also checks that every relative link in README.md and docs/ names a
//! file that exists and, for a `#fragment` into a Markdown file, a heading
//! there: pages moved or renamed leave no dead links behind.

use std::fs;
use std::path::{Path, PathBuf};

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A `mod` declaration at the top level of a source file.
struct ModDecl {
    name: String,
    /// `mod name;` (its body is in another file) rather than `mod name { ... }`.
    in_own_file: bool,
}

fn is_test_only(name: &str) -> bool {
    name == "tests" || name.ends_with("_tests") || name == "test_support"
}

/// The modules `source` declares at its own top level (unindented lines, as
/// rustfmt writes them), without test-only ones.
fn declared_modules(source: &str) -> Vec<ModDecl> {
    let mut modules = Vec::new();
    let mut under_cfg_test = false;
    for line in source.lines() {
        if line.starts_with("#[") {
            under_cfg_test |= line.replace(' ', "").starts_with("#[cfg(test)]");
            continue;
        }
        let gated = std::mem::take(&mut under_cfg_test);
        let Some(rest) = strip_visibility(line).strip_prefix("mod ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || gated || is_test_only(&name) {
            continue;
        }
        let in_own_file = rest[name.len()..].trim_start().starts_with(';');
        modules.push(ModDecl { name, in_own_file });
    }
    modules
}

fn strip_visibility(line: &str) -> &str {
    if let Some(rest) = line.strip_prefix("pub ") {
        return rest;
    }
    if let Some(rest) = line.strip_prefix("pub(") {
        if let Some((_, after)) = rest.split_once(") ") {
            return after;
        }
    }
    line
}

/// The file holding module `name` declared in directory `dir`.
fn module_file(dir: &Path, name: &str) -> PathBuf {
    let flat = dir.join(format!("{name}.rs"));
    if flat.is_file() {
        return flat;
    }
    let nested = dir.join(name).join("mod.rs");
    assert!(
        nested.is_file(),
        "module `{name}` has neither {} nor {}",
        flat.display(),
        nested.display()
    );
    nested
}

/// Every module of the library crate down to the second level, as paths
/// (`storage`, `storage::luks`).
fn library_modules() -> Vec<String> {
    let src = repo_file("src");
    let mut paths = Vec::new();
    for top in declared_modules(&read(&src.join("lib.rs"))) {
        paths.push(top.name.clone());
        if !top.in_own_file {
            continue;
        }
        let file = module_file(&src, &top.name);
        for child in declared_modules(&read(&file)) {
            paths.push(format!("{}::{}", top.name, child.name));
        }
    }
    paths
}

/// The variants of `seccomp::ThreadKind`, read from the enum's source.
fn thread_kinds() -> Vec<String> {
    let source = read(&repo_file("src/seccomp.rs"));
    let body = source
        .split_once("pub enum ThreadKind {")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .map(|(body, _)| body)
        .expect("seccomp.rs declares `pub enum ThreadKind { ... }`");
    body.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//") && !line.starts_with('#'))
        .map(|line| {
            line.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

fn missing_from_doc(doc: &str, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .cloned()
        .collect()
}

fn architecture_doc() -> String {
    read(&repo_file("../docs/architecture.md"))
}

#[test]
fn architecture_doc_names_every_module() {
    let modules = library_modules();
    assert!(
        modules.iter().any(|m| m.contains("::")),
        "no second-level module found in vmm/src: the parser is broken ({modules:?})"
    );
    let missing = missing_from_doc(&architecture_doc(), &modules);
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name these modules of vmm/src (write each as \
         `path` in backticks in the module map): {}",
        missing.join(", ")
    );
}

#[test]
fn architecture_doc_names_every_thread_kind() {
    let kinds = thread_kinds();
    assert!(
        kinds.len() > 1,
        "no ThreadKind variants found in seccomp.rs: the parser is broken ({kinds:?})"
    );
    let missing = missing_from_doc(&architecture_doc(), &kinds);
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name these seccomp thread kinds (write each as \
         `Variant` in backticks): {}",
        missing.join(", ")
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut in_fence = false;
    text.lines()
        .filter(|line| {
            if line.starts_with("```") {
                in_fence = !in_fence;
                return false;
            }
            !in_fence
        })
        .collect()
}

fn heading_anchors(text: &str) -> Vec<String> {
    prose_lines(text)
        .into_iter()
        .filter_map(|line| {
            let level = line.chars().take_while(|c| *c == '#').count();
            let title = line.get(level..)?.strip_prefix(' ')?;
            (1..=6).contains(&level).then(|| heading_anchor(title))
        })
        .collect()
}

/// The targets of the inline links `[text](target)` of a Markdown text.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// What is wrong with each relative link of the Markdown file `page`.
fn broken_links(page: &Path) -> Vec<String> {
    let text = read(page);
    let dir = page.parent().expect("a page lives in a directory");
    let mut broken = Vec::new();
    for target in link_targets(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
        let file = if path.is_empty() {
            page.to_path_buf()
        } else {
            dir.join(path)
        };
        if !file.exists() {
            broken.push(format!("{}: {target}: no such file", page.display()));
        } else if !fragment.is_empty()
            && file.extension().is_some_and(|ext| ext == "md")
            && !heading_anchors(&read(&file)).iter().any(|a| a == fragment)
        {
            broken.push(format!("{}: {target}: no such heading", page.display()));
        }
    }
    broken
}

fn markdown_files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            markdown_files_under(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "md") {
            found.push(path);
        }
    }
}

#[test]
fn readme_and_docs_links_resolve() {
    let mut pages = vec![repo_file("../README.md")];
    markdown_files_under(&repo_file("../docs"), &mut pages);
    let broken: Vec<String> = pages.iter().flat_map(|page| broken_links(page)).collect();
    assert!(
        broken.is_empty(),
        "broken links in README.md or docs/:\n{}",
        broken.join("\n")
    );
}

#[test]
fn link_check_finds_dead_files_and_headings() {
    let dir = std::env::temp_dir().join(format!("architecture-doc-links-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("other.md"),
        "# Other page\n\n## Smart cards (PKCS#11)\n",
    )
    .unwrap();
    let page = dir.join("page.md");
    fs::write(
        &page,
        "[ok](other.md) [ok](other.md#smart-cards-pkcs11) [web](https://example.org/x)\n\
         ```\n[in code](nowhere.md)\n```\n\
         [gone](missing.md) [bad anchor](other.md#no-such-heading) [self](#other-page)\n",
    )
    .unwrap();
    let broken = broken_links(&page);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(broken.len(), 3, "{broken:?}");
    assert!(
        broken[0].ends_with("missing.md: no such file"),
        "{broken:?}"
    );
    assert!(broken[1].ends_with("other.md#no-such-heading: no such heading"));
    assert!(broken[2].ends_with("#other-page: no such heading"));
}

#[test]
fn module_parser_skips_test_only_modules() {
    let source = "\
//! mod in_a_comment;
pub mod shown;
pub(crate) mod also_shown;
mod inline_one {
    mod nested_not_top_level;
}
#[cfg(test)]
mod gated;
#[cfg(test)]
#[path = \"x.rs\"]
mod gated_with_path;
mod tests;
mod crash_tests;
pub(crate) mod test_support;
";
    let found: Vec<(String, bool)> = declared_modules(source)
        .into_iter()
        .map(|m| (m.name, m.in_own_file))
        .collect();
    assert_eq!(
        found,
        vec![
            ("shown".to_string(), true),
            ("also_shown".to_string(), true),
            ("inline_one".to_string(), false),
        ]
    );
}

#[test]
fn missing_names_are_reported() {
    let doc = "| `storage` | disks |\n| `storage::luks` | LUKS |\nstorage::xts without backticks";
    let names = ["storage", "storage::luks", "storage::xts"].map(String::from);
    assert_eq!(missing_from_doc(doc, &names), vec!["storage::xts"]);
}
