//! The architecture test: every reference from one top-level module of `src/` to another must be
//! one the README's layering table allows, so the picture in the README stays true.
//!
//! Takes in `README.md` (the table under "Layering": one row per top-level module, the modules it
//! may use, rows from the edges down to the base) and every `src/**/*.rs` file; gives out one
//! failure listing every forbidden reference with its file and line, every module without a row,
//! and every row that names a row above it (layers that loop).
//!
//! A reference is any path that starts at the crate root in code: `use crate::x…` lines, grouped
//! `use crate::{x, y::z}` (over several lines too), `crate::x::…` written inline in code,
//! `super::…` chains that climb to the crate root, and `dropsync::x` in `main.rs` (the binary
//! reaches the library by its name). Comments, doc links and string literals are not code and do
//! not count. Test code is exempt: items under `#[cfg(test)]` (the `mod tests` blocks) and files
//! named `tests.rs` or `*_tests.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Rust source as tokens with their line numbers, leaving out comments and literals.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let (mut out, mut i, mut line) = (Vec::new(), 0, 1);
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= c.len() {
                    break;
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if (ch == 'r' || (ch == 'b' && at(i + 1) == 'r'))
            && matches!(at(i + 1 + usize::from(ch == 'b')), '"' | '#')
        {
            // A raw string: r"…", r#"…"#, br"…"; its end is a quote and as many hashes.
            let mut j = i + 1 + usize::from(ch == 'b');
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) != '"' {
                // r#ident, a raw identifier.
                i = j;
                continue;
            }
            j += 1;
            while j < c.len() && !(c[j] == '"' && (1..=hashes).all(|h| at(j + h) == '#')) {
                line += usize::from(c[j] == '\n');
                j += 1;
            }
            i = j + 1 + hashes;
        } else if ch == '"' || (ch == 'b' && at(i + 1) == '"') {
            let mut j = i + 1 + usize::from(ch == 'b');
            while j < c.len() && c[j] != '"' {
                line += usize::from(c[j] == '\n');
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{7f}') or a lifetime ('a), which has no closing quote.
            if at(i + 1) == '\\' {
                // Past the escaped character, which may be a quote itself ('\'').
                let mut j = i + 3;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

fn is(t: Option<&(Tok, usize)>, want: &Tok) -> bool {
    t.is_some_and(|(tok, _)| tok == want)
}

/// Where `#[cfg(test)]` starts at `i`, the index just past the item it guards.
fn skip_test_item(t: &[(Tok, usize)], i: usize) -> Option<usize> {
    let attr = [
        Tok::Punct('#'),
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    if t.len() < i + attr.len() || t[i..i + attr.len()].iter().zip(&attr).any(|((a, _), b)| a != b) {
        return None;
    }
    // The item ends at a `;` or `,` outside brackets, or with its first `{…}` block.
    let mut depth = 0usize;
    for (j, (tok, _)) in t.iter().enumerate().skip(i + attr.len()) {
        match tok {
            Tok::Punct('(' | '[') => depth += 1,
            Tok::Punct(')' | ']') => depth = depth.saturating_sub(1),
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if depth <= 1 {
                    return Some(j + 1);
                }
                depth -= 1;
            }
            Tok::Punct(';' | ',') if depth == 0 => return Some(j + 1),
            _ => {}
        }
    }
    Some(t.len())
}

/// A reference from a file to a top-level module, with its line.
struct Reference {
    target: String,
    line: usize,
}

/// The top-level modules a file's code reaches through the crate root. `module` is the file's
/// own module path (`["ingress", "sftp", "fs"]`), which `super::` climbs from.
fn references(src: &str, module: &[String], root_names: &[&str]) -> Vec<Reference> {
    let t = tokens(src);
    let mut refs = Vec::new();
    // Inline `mod x { … }` blocks: the brace depth each one closes at, so `super::` climbs right.
    let (mut module, mut inline, mut depth) = (module.to_vec(), Vec::new(), 0usize);
    let mut i = 0;
    while i < t.len() {
        if let Some(next) = skip_test_item(&t, i) {
            i = next;
            continue;
        }
        let prev_is_path = i > 0 && matches!(t[i - 1].0, Tok::PathSep | Tok::Punct('$'));
        let name = ident(t.get(i));
        match &t[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last() == Some(&depth) {
                    inline.pop();
                    module.pop();
                }
            }
            Tok::Ident(m) if m == "mod" && is(t.get(i + 2), &Tok::Punct('{')) => {
                module.push(ident(t.get(i + 1)).unwrap_or_default().to_string());
                inline.push(depth);
            }
            _ => {}
        }
        // Where a path reaches the crate root, the index of the segment after it.
        let mut at_root = None;
        if !prev_is_path && name.is_some_and(|n| root_names.contains(&n)) && is(t.get(i + 1), &Tok::PathSep) {
            at_root = Some(i + 2);
        } else if !prev_is_path && name == Some("super") {
            let (mut j, mut up) = (i, 0);
            while ident(t.get(j)) == Some("super") && is(t.get(j + 1), &Tok::PathSep) {
                up += 1;
                j += 2;
            }
            if up > 0 && up >= module.len() {
                at_root = Some(j);
            }
        }
        if let Some(j) = at_root {
            let line = t[j.min(t.len() - 1)].1;
            if let Some(target) = ident(t.get(j)) {
                refs.push(Reference {
                    target: target.to_string(),
                    line,
                });
            } else if is(t.get(j), &Tok::Punct('{')) {
                // A group: the first segment of each element at the group's own level.
                let (mut level, mut first) = (0, true);
                for (tok, line) in &t[j..] {
                    match tok {
                        Tok::Punct('{') => level += 1,
                        Tok::Punct('}') => {
                            level -= 1;
                            if level == 0 {
                                break;
                            }
                        }
                        Tok::Punct(',') if level == 1 => first = true,
                        Tok::Ident(s) if level == 1 && first => {
                            if s != "self" {
                                refs.push(Reference {
                                    target: s.clone(),
                                    line: *line,
                                });
                            }
                            first = false;
                        }
                        _ => first = false,
                    }
                }
            }
        }
        i += 1;
    }
    refs
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A module name as the README writes it (`catalog/`, `reports.rs`) as the crate names it.
fn module_name(cell: &str) -> String {
    cell.trim_end_matches('/').trim_end_matches(".rs").to_string()
}

/// The names in backticks in a table cell.
fn backticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(module_name).collect()
}

/// The README's layering table: each top-level module, its row, and the modules it may use.
fn layering_table(readme: &str) -> BTreeMap<String, (usize, BTreeSet<String>)> {
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.replace(' ', "").starts_with("|module|mayuse|"));
    assert!(
        lines.next().is_some(),
        "README.md has no table headed `| module | may use |`"
    );
    let mut table = BTreeMap::new();
    for (n, row) in lines.skip(1).take_while(|l| l.starts_with('|')).enumerate() {
        let cells: Vec<&str> = row.split('|').collect();
        assert!(cells.len() >= 4, "a layering row without two cells: {row}");
        let may_use: BTreeSet<String> = backticked(cells[2]).into_iter().collect();
        for module in backticked(cells[1]) {
            assert!(
                table.insert(module.clone(), (n, may_use.clone())).is_none(),
                "`{module}` has two rows"
            );
        }
    }
    table
}

#[test]
fn imports_follow_the_readme_layering_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = layering_table(&fs::read_to_string(root.join("README.md")).expect("read README.md"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();

    let mut problems = Vec::new();
    let mut modules = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(root.join("src")).expect("under src/");
        let mut module: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        let last = module.pop().expect("a file name");
        let stem = last.trim_end_matches(".rs");
        if stem == "tests" || stem.ends_with("_tests") || (module.is_empty() && stem == "lib") {
            continue;
        }
        if stem != "mod" {
            module.push(stem.to_string());
        }
        let top = module[0].clone();
        modules.insert(top.clone());
        let Some((_, may_use)) = table.get(&top) else {
            continue;
        };
        // The binary is its own crate and reaches the library by name.
        let root_names: &[&str] = if top == "main" { &["dropsync"] } else { &["crate"] };
        let src = fs::read_to_string(file).expect("read a source file");
        for r in references(&src, &module, root_names) {
            if r.target != top && !may_use.contains(&r.target) {
                problems.push(format!("{top} -> {} ({}:{})", r.target, rel.display(), r.line));
            }
        }
    }
    for module in &modules {
        if !table.contains_key(module) {
            problems.push(format!("{module}: a module the README's layering table has no row for"));
        }
    }
    for (module, (row, may_use)) in &table {
        for m in may_use.iter().chain([module]) {
            if !modules.contains(m) {
                problems.push(format!("{m}: named in the README's layering table, but no such module"));
            }
        }
        // Layers point one way: a row names only rows below it, so no two modules can use
        // each other, directly or around a loop.
        for m in may_use {
            if table.get(m).is_some_and(|(other, _)| other <= row) {
                problems.push(format!("{module} may use {m}, but {m}'s row is not below {module}'s"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports the README's layering table forbids (or a table out of step with src/):\n  {}",
        problems.join("\n  ")
    );
}

/// The scanner itself: what counts as a reference, and what does not.
#[test]
fn references_are_read_from_code_only() {
    let src = r####"
//! Docs name [`crate::doc_link`] and `use crate::in_docs;` without using them.
use crate::one::Thing;
pub use crate::{
    two::{A, B},
    three, self,
};
use super::four;
pub(crate) fn f() -> crate::five::T {
    let s = "crate::in_a_string";
    let r = r#"use crate::in_a_raw_string;"#;
    let c = ['{', '\'', '"', '\\'];
    let q = ('\'','"', crate::nine::Q);
    let l: &'static str = s; /* crate::in_a_comment */
    macro_rules! m { () => { $crate::in_a_macro } }
    super::super::six::g();
    mod inner {
        use super::super::seven;
    }
}
#[cfg(test)]
mod tests {
    use crate::in_tests;
}
#[cfg(test)]
use crate::test_only;
use crate::eight;
"####;
    let found: Vec<String> = references(src, &["m".into()], &["crate"])
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(
        found,
        ["one", "two", "three", "four", "five", "nine", "six", "seven", "eight"]
    );
    // Deeper in a module, `super::` climbs to the crate root only as often as it is nested.
    let nested = references(
        "use super::sibling; use super::super::top;",
        &["a".into(), "b".into()],
        &["crate"],
    );
    let nested: Vec<String> = nested.into_iter().map(|r| r.target).collect();
    assert_eq!(nested, ["top"]);
}
