//! Rotation on real files: parts shifted and bounded, the live log truncated in place (a
//! writer holding it `O_APPEND` goes on at its new start, with no hole), modes kept.

use super::*;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

fn limits(max_bytes: u64, keep: u32) -> LogsSettings {
    LogsSettings { max_bytes, keep }
}

fn appender(path: &Path) -> File {
    pool_journal::private::file_options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

#[test]
fn a_small_log_is_left_alone_and_a_missing_one_is_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("p.log");
    assert!(!rotate_if_over(&log, limits(4096, 2), 0).unwrap());
    fs::write(&log, "short\n").unwrap();
    assert!(!rotate_if_over(&log, limits(4096, 2), 0).unwrap());
    assert_eq!(fs::read_to_string(&log).unwrap(), "short\n");
    assert!(!rotated_path(&log, 1).exists());
}

#[test]
fn rotation_keeps_keep_parts_and_the_writer_goes_on_at_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("p.log");
    // The engine's descriptor: opened once, O_APPEND, kept across the rotations.
    let mut engine = appender(&log);
    for round in 0..4 {
        for i in 0..100 {
            writeln!(engine, "round {round} line {i} {}", "x".repeat(40)).unwrap();
        }
        assert!(rotate_if_over(&log, limits(4096, 2), 1_000).unwrap());
        let fresh = fs::read_to_string(&log).unwrap();
        assert!(fresh.starts_with(LOG_HEADER_PREFIX), "{fresh}");
        assert!(fresh.contains("previous part in p.log.1"), "{fresh}");
        let part = fs::read_to_string(rotated_path(&log, 1)).unwrap();
        assert!(
            part.contains(&format!("round {round} line 99")),
            "round {round}"
        );
    }
    assert!(rotated_path(&log, 2).exists());
    assert!(!rotated_path(&log, 3).exists());
    let older = fs::read_to_string(rotated_path(&log, 2)).unwrap();
    assert!(older.contains("round 2 line 0"), "{older}");
    // The engine's next write lands right after our line: no hole of zeros before it.
    writeln!(engine, "after the rotation").unwrap();
    let meta = fs::metadata(&log).unwrap();
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.ends_with("after the rotation\n"), "{text}");
    assert!(!text.contains('\0'));
    assert_eq!(meta.len() as usize, text.len());
    assert!(meta.len() < 4096);
}

#[test]
fn parts_get_the_mode_of_their_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("p@b.log");
    let mut engine = appender(&log);
    engine.write_all(&vec![b'y'; 8192]).unwrap();
    fs::set_permissions(&log, fs::Permissions::from_mode(0o640)).unwrap();
    assert!(rotate_if_over(&log, limits(4096, 1), 0).unwrap());
    let part = fs::metadata(rotated_path(&log, 1)).unwrap();
    assert_eq!(part.permissions().mode() & 0o777, 0o640);
    assert_eq!(part.len(), 8192);
    assert_eq!(part.gid(), fs::metadata(&log).unwrap().gid());
    // keep = 1: the next rotation replaces the one part.
    engine.write_all(&vec![b'z'; 8192]).unwrap();
    assert!(rotate_if_over(&log, limits(4096, 1), 0).unwrap());
    assert!(!rotated_path(&log, 2).exists());
    let part = fs::read(rotated_path(&log, 1)).unwrap();
    assert!(part.ends_with(b"zzzz"));
}

#[test]
fn a_directory_pass_rotates_the_logs_only() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.log"), vec![b'a'; 5000]).unwrap();
    fs::write(dir.path().join("b.log"), b"small\n").unwrap();
    fs::write(dir.path().join("a.log.1"), vec![b'o'; 5000]).unwrap();
    fs::write(dir.path().join("notes.txt"), vec![b'n'; 5000]).unwrap();
    assert_eq!(rotate_dir(dir.path(), limits(4096, 3), 0), 1);
    assert_eq!(
        fs::read(dir.path().join("a.log.2")).unwrap(),
        vec![b'o'; 5000]
    );
    assert_eq!(
        fs::read(dir.path().join("a.log.1")).unwrap(),
        vec![b'a'; 5000]
    );
    assert_eq!(fs::read(dir.path().join("notes.txt")).unwrap().len(), 5000);
    let parts = parts_newest_first(&dir.path().join("a.log"), 3);
    assert_eq!(parts.len(), 3);
}
