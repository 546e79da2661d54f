//! Unit tests of `server`.

use super::*;

#[test]
fn the_cap_stays_below_the_open_file_limit() {
    assert_eq!(effective_cap(1024, None), (1024, None));
    assert_eq!(effective_cap(1024, Some(65_536)), (1024, None));
    let (cap, why) = effective_cap(1024, Some(256));
    assert_eq!(cap, 256 - FD_RESERVE - REFUSE_SLOTS);
    let why = why.unwrap();
    assert!(
        why.contains("api.max_connections 1024 lowered to 160"),
        "{why}"
    );
    assert!(why.contains("RLIMIT_NOFILE"), "{why}");
    assert_eq!(effective_cap(1024, Some(10)).0, 1);
}
