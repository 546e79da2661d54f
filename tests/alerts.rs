//! The alerting rules (`packaging/prometheus/pool-managerd.rules.yml`): `promtool check rules`
//! (every linter on, a finding fails), `promtool test rules` on
//! `packaging/prometheus/pool-managerd.rules.test.yml`, that test file covers every alert
//! with at least one case where it fires and one where it stays silent (`exp_alerts: []`), and
//! every alert has a severity, a summary, a description that names its pool and points to
//! `explain`, and a runbook hint.
//!
//! `promtool` comes from Debian's `prometheus` package (`.ci/run` installs it): without it the
//! promtool checks fail under `CI=true` and are skipped with a printed reason elsewhere. The
//! coverage check needs no promtool.
//!
//! The YAML is read line by line (no YAML library in the tree): an alert is a `- alert: NAME`
//! line of the rules file; a case of the test file is an `alertname: NAME` line followed by
//! its `exp_alerts:`, silent when that is `exp_alerts: []`, firing when a list follows.

#[path = "support/promtool.rs"]
mod promtool;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use promtool::promtool;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus")
}

const RULES: &str = "pool-managerd.rules.yml";
const RULE_TESTS: &str = "pool-managerd.rules.test.yml";

/// Runs `promtool args` in the rules' folder; the combined output, after asserting that it
/// succeeded and said nothing but the lines `allowed` accepts.
fn run_promtool(promtool: &str, args: &[&str], allowed: impl Fn(&str) -> bool) -> String {
    let output = Command::new(promtool)
        .args(args)
        .current_dir(dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {promtool}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let findings: Vec<&str> = said
        .lines()
        .filter(|line| !line.trim().is_empty() && !allowed(line.trim()))
        .collect();
    assert!(
        output.status.success() && findings.is_empty(),
        "promtool {} ({}): {findings:?}\n{said}",
        args.join(" "),
        output.status
    );
    said
}

#[test]
fn the_rules_pass_promtool_check_with_every_linter() {
    let Some(promtool) = promtool() else { return };
    let said = run_promtool(
        promtool,
        &["check", "rules", "--lint=all", "--lint-fatal", RULES],
        |line| line.starts_with("Checking ") || line.starts_with("SUCCESS: "),
    );
    let alerts = alert_names().len();
    assert!(alerts >= 10, "{alerts} alerts only:\n{said}");
}

#[test]
fn every_alert_passes_its_promtool_unit_tests() {
    let Some(promtool) = promtool() else { return };
    run_promtool(promtool, &["test", "rules", RULE_TESTS], |line| {
        line.starts_with("Unit Testing: ") || line == "SUCCESS"
    });
}

/// The alerts of the rules file, in order.
fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(dir().join(RULES)).unwrap();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_string())
        .collect()
}

/// The rules file's alerts: name and the text of its rule (up to the next rule).
fn alert_blocks() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir().join(RULES)).unwrap();
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let rule = line.trim_start().starts_with("- ");
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            blocks.push((name.trim().to_string(), String::new()));
        } else if rule && line.contains("record:") {
            // A recording rule ends the alert before it (none follow the alerts today).
            blocks.push((String::new(), String::new()));
        } else if let Some((_, block)) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks.retain(|(name, _)| !name.is_empty());
    blocks
}

#[test]
fn every_alert_has_a_severity_and_says_what_to_do() {
    let blocks = alert_blocks();
    assert_eq!(blocks.len(), alert_names().len());
    let mut wrong = Vec::new();
    for (name, block) in &blocks {
        for wanted in [
            "severity:",
            "summary:",
            "description:",
            "runbook:",
            "explain",
        ] {
            if !block.contains(wanted) {
                wrong.push(format!("{name}: no `{wanted}`"));
            }
        }
        // An alert about one pool (`Pool...`, not `PoolManagerd...`) names it.
        let pool = name.starts_with("Pool") && !name.starts_with("PoolManagerd");
        if pool && !block.contains("{{ $labels.pool_id }}") {
            wrong.push(format!(
                "{name}: its pool is not named ({{{{ $labels.pool_id }}}})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{RULES}:\n{}", wrong.join("\n"));
}

/// The test file's cases: alert name to (firing cases, silent cases).
fn cases() -> BTreeMap<String, (usize, usize)> {
    let text = std::fs::read_to_string(dir().join(RULE_TESTS)).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, line) in lines.iter().enumerate() {
        let line = line.trim_start_matches("- ");
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().trim_matches('"').to_string());
            continue;
        }
        let Some(rest) = line.strip_prefix("exp_alerts:") else {
            continue;
        };
        let name = current
            .take()
            .unwrap_or_else(|| panic!("{RULE_TESTS}: exp_alerts with no alertname before it"));
        let entry = out.entry(name).or_default();
        match rest.trim() {
            "[]" => entry.1 += 1,
            "" if lines.get(n + 1).is_some_and(|next| next.starts_with('-')) => entry.0 += 1,
            other => panic!("{RULE_TESTS}: `exp_alerts:{other}`: write `[]` or a list below"),
        }
    }
    out
}

#[test]
fn every_alert_has_a_firing_and_a_silent_case() {
    let alerts = alert_names();
    assert!(!alerts.is_empty(), "no `- alert:` in {RULES}");
    let unique: BTreeSet<&String> = alerts.iter().collect();
    assert_eq!(
        unique.len(),
        alerts.len(),
        "an alert is named twice: {alerts:?}"
    );
    let cases = cases();
    let mut missing = Vec::new();
    for alert in &alerts {
        let (firing, silent) = cases.get(alert).copied().unwrap_or_default();
        if firing == 0 {
            missing.push(format!("{alert}: no case where it fires"));
        }
        if silent == 0 {
            missing.push(format!(
                "{alert}: no case where it stays silent (exp_alerts: [])"
            ));
        }
    }
    for tested in cases.keys() {
        if !unique.contains(tested) {
            missing.push(format!("{tested}: tested but not in {RULES}"));
        }
    }
    assert!(missing.is_empty(), "{RULE_TESTS}:\n{}", missing.join("\n"));
}
