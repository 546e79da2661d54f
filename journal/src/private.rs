//! Owner-only modes for what a journal holds (and, through the daemon, its runtime
//! directory): directories 0700, files 0600, whatever the process umask. The journal keeps
//! every `env{}` value a caller gave, so nobody but its owner may read it.
//!
//! Owns: creating directories and files with those modes, and tightening an existing tree
//! whose entries allow group or other access, each change logged with its path and old mode.
//! **Must never:** loosen a mode, follow a symlink below the root, change an owner, touch a
//! shared directory (one with the sticky bit, such as `/tmp`), or walk deeper than
//! [`MAX_DEPTH`] levels.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// The mode of every directory created here.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file created here.
pub const FILE_MODE: u32 = 0o600;
/// How many levels below the root [`tighten_tree`] walks (a journal is three deep).
pub const MAX_DEPTH: usize = 4;
/// How many changes [`tighten_tree`] logs one by one; the rest are counted in one line.
pub const MAX_LOGGED: usize = 20;

const STICKY: u32 = 0o1000;

/// Creates `dir` and its missing parents with mode 0700 (an existing directory keeps its
/// mode: see [`tighten_tree`]).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// `OpenOptions` whose created files get mode 0600.
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Takes group and other access away from `root` and from everything below it (files and
/// directories alike; symlinks are left as they are). Returns how many entries changed; each
/// change is logged (`warn`). An entry that cannot be changed is logged and skipped; only an
/// unreadable `root` is an error.
pub fn tighten_tree(root: &Path) -> io::Result<usize> {
    tighten_tree_keeping(root, 0)
}

/// [`tighten_tree`], leaving the bits of `keep` (e.g. `0o050`: group read and search) where
/// they are set.
pub fn tighten_tree_keeping(root: &Path, keep: u32) -> io::Result<usize> {
    let meta = std::fs::metadata(root)?;
    if meta.permissions().mode() & STICKY != 0 {
        tracing::warn!(
            path = %root.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o7777),
            "a shared directory (sticky bit) is left as it is: give pool-managerd a directory of its own (runtime_dir, journal_dir)"
        );
        return Ok(0);
    }
    let mut changed = 0;
    walk(root, &meta, keep, 0, &mut changed);
    if changed > MAX_LOGGED {
        tracing::warn!(
            path = %root.display(),
            changed,
            "took group and other access away from {changed} entries (the first {MAX_LOGGED} are logged)"
        );
    }
    Ok(changed)
}

fn walk(path: &Path, meta: &std::fs::Metadata, keep: u32, depth: usize, changed: &mut usize) {
    tighten_one(path, meta, keep, changed);
    if !meta.is_dir() || depth >= MAX_DEPTH {
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot list a directory to tighten its modes; check its owner");
            return;
        }
    };
    for entry in entries.flatten() {
        let child = entry.path();
        match std::fs::symlink_metadata(&child) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(m) => walk(&child, &m, keep, depth + 1, changed),
            Err(_) => {} // removed meanwhile
        }
    }
}

/// Removes the group and other bits of one entry, but those in `keep`.
fn tighten_one(path: &Path, meta: &std::fs::Metadata, keep: u32, changed: &mut usize) {
    let mode = meta.permissions().mode() & 0o7777;
    let wanted = mode & !(0o077 & !keep);
    if wanted == mode {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted)) {
        Ok(()) => {
            *changed += 1;
            if *changed <= MAX_LOGGED {
                tracing::warn!(
                    path = %path.display(),
                    old_mode = format!("{mode:o}"),
                    new_mode = format!("{wanted:o}"),
                    "took group and other access away (the daemon's files are its own)"
                );
            }
        }
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            error = %e,
            "cannot take group and other access away; check the owner of this path"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_loose_tree_is_tightened_and_a_tight_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("j");
        create_dir_all(&root.join("a/b")).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("a/b")), 0o700);
        let file = root.join("a/b/f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"y").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        assert_eq!(tighten_tree(&root).unwrap(), 2);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&outside), 0o644, "a symlink's target is not touched");
        assert_eq!(tighten_tree(&root).unwrap(), 0);
        let created = root.join("new");
        file_options()
            .write(true)
            .create_new(true)
            .open(&created)
            .unwrap();
        assert_eq!(mode(&created), 0o600);
    }

    #[test]
    fn kept_bits_stay_and_a_shared_directory_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        create_dir_all(&logs).unwrap();
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(tighten_tree_keeping(&logs, 0o050).unwrap(), 1);
        assert_eq!(mode(&logs), 0o750);
        let shared = dir.path().join("shared");
        create_dir_all(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(tighten_tree(&shared).unwrap(), 0);
        assert_eq!(mode(&shared), 0o1777);
    }
}
