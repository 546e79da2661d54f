//! Parameter types of the steps, and the JSON path lookup shared by the answer steps.

use std::str::FromStr;

use cucumber::Parameter;
use serde_json::Value;

/// `live` or `not live` (an engine process exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "liveness", regex = "live|not live")]
pub struct Liveness(pub bool);

impl FromStr for Liveness {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "live" => Ok(Liveness(true)),
            "not live" => Ok(Liveness(false)),
            other => Err(format!("expected 'live' or 'not live', got '{other}'")),
        }
    }
}

/// `ready` or `not ready` (the pool serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "readiness", regex = "ready|not ready")]
pub struct Readiness(pub bool);

impl FromStr for Readiness {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ready" => Ok(Readiness(true)),
            "not ready" => Ok(Readiness(false)),
            other => Err(format!("expected 'ready' or 'not ready', got '{other}'")),
        }
    }
}

/// A JSON scalar as written in a step: `"text"`, `42`, `true`, `false` or `null`.
#[derive(Debug, Clone, PartialEq, Parameter)]
#[param(name = "json", regex = r#""[^"]*"|-?\d+(?:\.\d+)?|true|false|null"#)]
pub struct Json(pub Value);

impl FromStr for Json {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(text)
            .map(Json)
            .map_err(|e| format!("'{text}' is not a JSON value: {e}"))
    }
}

/// The value at a dotted `path` of `value` (`gpu.count`, `0.pool_id`, `model.path`); numeric
/// segments index lists. Fails the step, naming the path and the document, when absent.
pub fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    let mut current = value;
    for segment in path.split('.') {
        let next = match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        current = next.unwrap_or_else(|| panic!("no \"{path}\" in {value}"));
    }
    current
}

/// Splits a comma-separated list of a step ("p1, p2, p3").
pub fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}
