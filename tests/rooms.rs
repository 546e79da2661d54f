//! Small rooms: no file in `src/` over [`FILE_LINES_MAX`] lines, no production function of
//! the daemon, the core or the journal over [`FN_LINES_MAX`] lines.
//!
//! How a function is counted: from the line of its `fn` to the line of its closing brace,
//! both included (doc comments and attributes above it are not counted). Production means
//! every `.rs` file under `src/`, `core/src/` and `journal/src/`, except files named
//! `tests.rs`, files under a `tests/` folder, and items behind `#[cfg(test)]`. Strings, chars
//! and comments are blanked before braces are matched, so a `{` in a message does not count.

use std::path::{Path, PathBuf};

/// The longest file `src/` may hold.
const FILE_LINES_MAX: usize = 600;
/// The longest production function.
const FN_LINES_MAX: usize = 80;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Whether `path` holds tests only.
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name == "tests.rs")
        || path
            .components()
            .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "benches")
}

/// `text` with the contents of strings, chars and comments replaced by spaces (newlines
/// kept), so that braces and `fn` can be found by position.
fn blank(text: &str) -> Vec<u8> {
    let s = text.as_bytes();
    let mut out = s.to_vec();
    let mut i = 0;
    let wipe = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to.min(s.len())] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    while i < s.len() {
        let rest = &s[i..];
        let after_ident = i > 0 && (s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(s.len(), |p| i + p);
            wipe(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let end = find(s, i + 2, b"*/").map_or(s.len(), |p| p + 2);
            wipe(&mut out, i, end);
            i = end;
        } else if let Some(open) = raw_string_open(rest).filter(|_| !after_ident) {
            let hashes = open - 2 - usize::from(rest[0] == b'b');
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let end = find(s, i + open, &close).map_or(s.len(), |p| p + close.len());
            wipe(&mut out, i, end);
            i = end;
        } else if rest[0] == b'"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != b'"' {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            wipe(&mut out, i, j + 1);
            i = j + 1;
        } else if let Some(len) = char_literal(rest) {
            wipe(&mut out, i, i + len);
            i += len;
        } else {
            i += 1;
        }
    }
    out
}

/// The length of `r"`, `r#"`, `br##"`... at the start of `s`, if a raw string opens there.
fn raw_string_open(s: &[u8]) -> Option<usize> {
    let start = usize::from(s.first() == Some(&b'b'));
    if s.get(start) != Some(&b'r') {
        return None;
    }
    let hashes = s[start + 1..].iter().take_while(|&&b| b == b'#').count();
    (s.get(start + 1 + hashes) == Some(&b'"')).then_some(start + 2 + hashes)
}

/// The length of a char literal at the start of `s` (`'a'`, `'\n'`, `'\u{1F600}'`), if one
/// is there (a lifetime `'a` is not one).
fn char_literal(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'\'') {
        return None;
    }
    if s.get(1) == Some(&b'\\') {
        let end = s.iter().skip(2).position(|&b| b == b'\'')? + 2;
        return (end <= 12).then_some(end + 1);
    }
    let text = std::str::from_utf8(&s[1..s.len().min(6)])
        .ok()
        .or_else(|| {
            (2..6)
                .rev()
                .find_map(|n| std::str::from_utf8(&s[1..s.len().min(n)]).ok())
        })?;
    let c = text.chars().next()?;
    (s.get(1 + c.len_utf8()) == Some(&b'\'')).then_some(2 + c.len_utf8())
}

fn find(s: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    (from..s.len().saturating_sub(needle.len() - 1)).find(|&i| s[i..].starts_with(needle))
}

/// The index of the brace that closes the one at `open`.
fn closing(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, &b) in code.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    code.len() - 1
}

/// `code` with every item behind `#[cfg(test)]` blanked.
fn without_test_items(mut code: Vec<u8>) -> Vec<u8> {
    let marker = b"#[cfg(test)]";
    let mut from = 0;
    while let Some(at) = find(&code, from, marker) {
        let item = at + marker.len();
        let Some(open) = (item..code.len()).find(|&i| code[i] == b'{' || code[i] == b';') else {
            break;
        };
        let end = if code[open] == b'{' {
            closing(&code, open)
        } else {
            open
        };
        for b in &mut code[at..=end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
        from = end;
    }
    code
}

/// Each function of `code` with a body: (name, first line, lines).
fn functions(code: &[u8]) -> Vec<(String, usize, usize)> {
    let line_of = |i: usize| code[..i].iter().filter(|&&b| b == b'\n').count() + 1;
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = find(code, i, b"fn ") {
        i = at + 3;
        let word_start = at == 0 || !(code[at - 1].is_ascii_alphanumeric() || code[at - 1] == b'_');
        if !word_start {
            continue;
        }
        let name: String = code[i..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
            .map(|&b| b as char)
            .collect();
        if name.is_empty() {
            continue;
        }
        // The body opens at the first `{` outside parentheses and brackets; a `;` first
        // means a declaration without a body.
        let mut depth = 0i32;
        let mut body = None;
        for (j, &b) in code.iter().enumerate().skip(i) {
            match b {
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b';' if depth == 0 => break,
                b'{' if depth == 0 => {
                    body = Some(j);
                    break;
                }
                _ => {}
            }
        }
        if let Some(open) = body {
            let (first, last) = (line_of(at), line_of(closing(code, open)));
            found.push((name, first, last - first + 1));
        }
    }
    found
}

fn production_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["src", "core/src", "journal/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    files.retain(|path| !is_test_file(path.strip_prefix(root()).unwrap()));
    files
}

#[test]
fn no_file_in_src_is_over_the_limit() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).unwrap().lines().count();
            (lines > FILE_LINES_MAX).then(|| format!("{} ({lines} lines)", path.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {FILE_LINES_MAX} lines (split them by concern): {long:#?}"
    );
}

#[test]
fn no_production_function_is_over_the_limit() {
    let mut long = Vec::new();
    for path in production_files() {
        let code = without_test_items(blank(&std::fs::read_to_string(&path).unwrap()));
        for (name, line, lines) in functions(&code) {
            if lines > FN_LINES_MAX {
                let file = path.strip_prefix(root()).unwrap().display().to_string();
                long.push(format!("{file}:{line} {name} ({lines} lines)"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {FN_LINES_MAX} lines (split them into named steps): {long:#?}"
    );
}

/// The counter itself: it must see what it is meant to see.
#[test]
fn the_counter_counts_what_it_must() {
    let text = r#"
fn short() {
    let s = "}{ not a brace";
    let c = '}';
    // } a comment
    let r = r"}";
}

#[cfg(test)]
mod tests {
    fn hidden() {
        x();
        y();
    }
}

trait T {
    fn declared(&self) -> u8;
}

pub(crate) async fn three(a: (u8, u8)) -> Result<(), String> {
    Ok(())
}
"#;
    let code = without_test_items(blank(text));
    let found = functions(&code);
    assert_eq!(
        found,
        vec![("short".to_string(), 2, 6), ("three".to_string(), 21, 3)]
    );
    // The limits hold only because the counter finds long functions: one it must flag.
    let long = format!("fn long() {{\n{}}}\n", "    step();\n".repeat(FN_LINES_MAX));
    let found = functions(&without_test_items(blank(&long)));
    assert_eq!(found, vec![("long".to_string(), 1, FN_LINES_MAX + 2)]);
}
