//! Words and times for explanations: UTC clock times from recorded milliseconds, texts cut to
//! a bound, and the text form of an [`Explanation`](super::Explanation).
//!
//! Owns: formatting only. Never: reads a clock (every time printed is a recorded one) or
//! panics on any number (all arithmetic is unsigned and bounded).

use std::fmt::Write as _;

use super::Explanation;

/// The longest text kept from a recorded string (an engine log tail, a reason), in chars.
pub const TEXT_MAX: usize = 240;

/// `text` cut to [`TEXT_MAX`] chars (with `...` when cut), on one line.
pub fn cut(text: &str) -> String {
    cut_to(text, TEXT_MAX)
}

/// `text` cut to `max` chars (with `...` when cut), on one line.
pub fn cut_to(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max).collect();
    out.push_str("...");
    out
}

/// The date (year, month, day) of `days` since 1970-01-01 (the civil calendar, proleptic).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days.saturating_add(719_468);
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era.saturating_mul(400)).saturating_add(u64::from(month <= 2));
    (year, month, day)
}

/// `ts_ms` as RFC 3339 UTC with milliseconds: `2026-03-03T02:00:47.255Z`.
pub fn rfc3339(ts_ms: u64) -> String {
    let secs = ts_ms / 1_000;
    let (year, month, day) = civil(secs / 86_400);
    let in_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600,
        in_day % 3_600 / 60,
        in_day % 60,
        ts_ms % 1_000
    )
}

/// `ts_ms` as a UTC clock time, `02:00:47`, for sentences (the JSON carries the full time).
pub fn clock(ts_ms: u64) -> String {
    let in_day = ts_ms / 1_000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        in_day / 3_600,
        in_day % 3_600 / 60,
        in_day % 60
    )
}

/// A duration in words: `850 ms`, `12.5 s`, `5 min`, `2 h 3 min`.
pub fn duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        if ms % 1_000 == 0 {
            format!("{} s", ms / 1_000)
        } else {
            format!("{}.{} s", ms / 1_000, ms % 1_000 / 100)
        }
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, ms % 60_000 / 1_000)
    } else {
        format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

/// A list of seqs in words: `seqs 12, 19, 25` (at most the last 8 named).
pub fn seqs(list: &[u64]) -> String {
    let shown = list.len().min(8);
    let skip = list.len() - shown;
    let names: Vec<String> = list.iter().skip(skip).map(u64::to_string).collect();
    let prefix = if skip > 0 { "..., " } else { "" };
    match list.len() {
        0 => String::from("no seqs"),
        1 => format!("seq {}", names.join("")),
        _ => format!("seqs {prefix}{}", names.join(", ")),
    }
}

/// The text form of an explanation, for the command line.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let since = e.since.as_ref().map_or(String::new(), |m| {
        format!(" since {} (seq {})", m.at, m.seq)
    });
    let _ = writeln!(
        out,
        "pool {}: {}{since}",
        e.pool_id,
        e.phase.as_str().replace('_', " ")
    );
    let _ = writeln!(out, "  why: {}", e.why);
    if let Some(error) = &e.last_error {
        let _ = writeln!(out, "  last error: {error}");
    }
    if !e.chain.is_empty() {
        let _ = writeln!(out, "chain (as of seq {}):", e.as_of_seq);
        for (i, step) in e.chain.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {} seq {:>6}  {}",
                clock(step.ts_ms),
                step.seq,
                step.text
            );
            if i == 0 && e.chain_omitted > 0 {
                let _ = writeln!(out, "  ... {} more step(s) not shown", e.chain_omitted);
            }
        }
    }
    section(&mut out, "next:", e.next.iter().map(|n| n.text.as_str()));
    let actions: Vec<String> = e
        .actions
        .iter()
        .map(|a| match &a.request {
            Some(request) => format!("{}: {request}", a.text),
            None => a.text.clone(),
        })
        .collect();
    section(&mut out, "you can:", actions.iter().map(String::as_str));
    out
}

fn section<'a>(out: &mut String, title: &str, lines: impl Iterator<Item = &'a str>) {
    let mut lines = lines.peekable();
    if lines.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "{title}");
    for line in lines {
        let _ = writeln!(out, "  - {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(rfc3339(1_772_503_200_025), "2026-03-03T02:00:00.025Z");
        assert_eq!(clock(1_772_503_258_255), "02:00:58");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        let _ = rfc3339(u64::MAX);
        let _ = clock(u64::MAX);
    }

    #[test]
    fn long_texts_are_cut_on_chars() {
        let long = "é".repeat(TEXT_MAX + 5);
        assert_eq!(cut(&long).chars().count(), TEXT_MAX + 3);
        assert_eq!(cut("a\nb"), "a b");
    }

    #[test]
    fn durations_and_seqs_read() {
        assert_eq!(duration(1_096), "1.0 s");
        assert_eq!(duration(300_000), "5 min 0 s");
        assert_eq!(seqs(&[2]), "seq 2");
        assert_eq!(seqs(&[1, 2, 3]), "seqs 1, 2, 3");
        assert_eq!(
            seqs(&(1..=10).collect::<Vec<_>>()),
            "seqs ..., 3, 4, 5, 6, 7, 8, 9, 10"
        );
    }
}
