//! `promtool`, from Debian's `prometheus` package (`.ci/run` installs it), for the tests that
//! check the scrape (`tests/metrics.rs`), the alert rules (`tests/alerts.rs`) and the
//! dashboard's queries (`tests/dashboard.rs`). Included with `#[path]`.

use std::process::Command;

/// The promtool to run: `None` (after saying why) when it is missing outside CI; under
/// `CI=true` a missing promtool fails the test.
pub fn promtool() -> Option<&'static str> {
    let found = ["/usr/bin/promtool", "promtool"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("promtool is missing (Debian package `prometheus`; .ci/run installs it)");
        }
        eprintln!(
            "SKIPPED the promtool check: promtool is not installed (apt-get install prometheus)"
        );
    }
    found
}
