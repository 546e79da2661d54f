//! Generic requests, and checks of the last answer: its status, the error shape of SPEC
//! section 5 (`{"code", "error"}`), its fields, how long it took.

use cucumber::{then, when};
use reqwest::Method;

use crate::live::Body;
use crate::steps::params::{at, list, Json};
use crate::world::PoolWorld;

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap_or_else(|e| panic!("HTTP method {name}: {e}"))
}

#[when(expr = "a client sends {word} {string}")]
async fn client_sends(world: &mut PoolWorld, verb: String, path: String) {
    world.request(method(&verb), &path, Body::Empty).await;
}

#[then(expr = "the answer is {int}")]
fn answer_is(world: &mut PoolWorld, status: u16) {
    let answer = world.answer();
    assert_eq!(
        answer.status, status,
        "{} answered {}: {}",
        answer.request, answer.status, answer.body
    );
}

#[then(expr = "the answer is {int} with code {string}")]
fn answer_is_error(world: &mut PoolWorld, status: u16, code: String) {
    let answer = world.answer();
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (status, Some(code.as_str())),
        "{} answered {}: {}",
        answer.request,
        answer.status,
        answer.body
    );
    let object = answer
        .body
        .as_object()
        .unwrap_or_else(|| panic!("an error is a JSON object: {}", answer.body));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    // A failed reload also says whether it rolled back (SPEC section 9).
    let expected: &[&str] = if code == "RELOAD_FAILED" {
        &["code", "error", "rolled_back"]
    } else {
        &["code", "error"]
    };
    assert_eq!(
        keys, expected,
        "an error has exactly code and error (and rolled_back for RELOAD_FAILED)"
    );
    assert!(
        answer.body["error"]
            .as_str()
            .is_some_and(|e| !e.trim().is_empty()),
        "the error says what went wrong: {}",
        answer.body
    );
}

#[then(expr = "the answer's {string} is {json}")]
fn answer_field_is(world: &mut PoolWorld, path: String, expected: Json) {
    let answer = world.answer();
    assert_eq!(
        at(&answer.body, &path),
        &expected.0,
        "\"{path}\" of {}: {}",
        answer.request,
        answer.body
    );
}

#[then(expr = "the answer's {string} mentions {string}")]
fn answer_field_mentions(world: &mut PoolWorld, path: String, text: String) {
    let answer = world.answer();
    let value = at(&answer.body, &path)
        .as_str()
        .unwrap_or_else(|| panic!("\"{path}\" is not text: {}", answer.body));
    assert!(
        value.contains(&text),
        "\"{path}\" of {} should mention {text:?}: {value:?}",
        answer.request
    );
}

#[then(expr = "the answer's {string} is a number")]
fn answer_field_number(world: &mut PoolWorld, path: String) {
    let answer = world.answer();
    assert!(
        at(&answer.body, &path).is_u64(),
        "\"{path}\" should be a number: {}",
        answer.body
    );
}

#[then(expr = "the answer has exactly the fields {string}")]
fn answer_fields(world: &mut PoolWorld, fields: String) {
    let answer = world.answer();
    let mut expected = list(&fields);
    expected.sort();
    let mut keys: Vec<String> = answer
        .body
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {}", answer.body))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(keys, expected, "fields of {}", answer.request);
}

#[then(expr = "the answer equals the answer to GET {string}")]
async fn answer_equals_get(world: &mut PoolWorld, path: String) {
    let other = world.peek(Method::GET, &path).await;
    let answer = world.answer();
    assert_eq!(
        (answer.status, &answer.body),
        (other.status, &other.body),
        "{} and GET {path} should answer the same",
        answer.request
    );
}

#[then(expr = "the answer came within {int} ms")]
fn answer_within(world: &mut PoolWorld, ms: u64) {
    let answer = world.answer();
    assert!(
        answer.elapsed.as_millis() < u128::from(ms),
        "{} took {:?}, more than {ms} ms",
        answer.request,
        answer.elapsed
    );
}

#[then(expr = "the answer came no sooner than {int} ms")]
fn answer_not_before(world: &mut PoolWorld, ms: u64) {
    let answer = world.answer();
    assert!(
        answer.elapsed.as_millis() >= u128::from(ms),
        "{} took {:?}, less than {ms} ms",
        answer.request,
        answer.elapsed
    );
}

/// `Retry-After` of the last answer, in whole seconds.
#[then(expr = "the answer says to retry after {int} second(s)")]
fn answer_retry_after(world: &mut PoolWorld, seconds: u64) {
    let answer = world.answer();
    assert_eq!(
        answer.retry_after.as_deref(),
        Some(seconds.to_string().as_str()),
        "Retry-After of {} ({}): {}",
        answer.request,
        answer.status,
        answer.body
    );
}

#[then("the answer has no Retry-After")]
fn answer_no_retry_after(world: &mut PoolWorld) {
    let answer = world.answer();
    assert_eq!(
        answer.retry_after, None,
        "Retry-After of {} ({}): {}",
        answer.request, answer.status, answer.body
    );
}
