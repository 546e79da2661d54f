//! The live event stream (`GET /v2/events` with `Accept: text/event-stream`) as one client of
//! the scenario sees it: what it received (ids and kinds), disconnecting, resuming with
//! `Last-Event-ID` or `?since=`; and the list of pools at an earlier seq (`?at_seq=N`).

use std::collections::VecDeque;
use std::time::Duration;

use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::Value;

use crate::live::Body;
use crate::world::PoolWorld;

/// How long a step waits for the stream's next message.
const MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// The scenario's stream client: the open response (if connected) and every message received
/// over all its connections.
#[derive(Debug, Default)]
pub struct StreamClient {
    response: Option<reqwest::Response>,
    buffer: String,
    ready: VecDeque<Message>,
    pub received: Vec<Message>,
}

impl StreamClient {
    /// The last id received, over every connection.
    fn last_id(&self) -> Option<u64> {
        self.received.iter().rev().find_map(|m| m.id)
    }

    /// The next message (recorded as received); fails the step after [`MESSAGE_WAIT`].
    async fn next(&mut self) -> Message {
        loop {
            if let Some(message) = self.ready.pop_front() {
                self.received.push(message.clone());
                return message;
            }
            let response = self
                .response
                .as_mut()
                .expect("the client is not connected to the event stream");
            let chunk = tokio::time::timeout(MESSAGE_WAIT, response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {MESSAGE_WAIT:?}"))
                .expect("reading the event stream")
                .expect("the event stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if let Some(message) = parse(&frame) {
                    self.ready.push_back(message);
                }
            }
        }
    }
}

/// One SSE frame; `None` for a comment (keep-alive).
fn parse(frame: &str) -> Option<Message> {
    let mut message = Message {
        id: None,
        event: "message".to_string(),
        data: Value::Null,
    };
    let mut data = String::new();
    let mut any = false;
    for line in frame
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(':'))
    {
        any = true;
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => message.id = value.parse().ok(),
            "event" => message.event = value.to_string(),
            "data" => data.push_str(value),
            _ => {}
        }
    }
    message.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
    any.then_some(message)
}

/// Connects the scenario's client: `query` after `/v2/events`, `last_event_id` as the header.
async fn connect(world: &mut PoolWorld, query: &str, last_event_id: Option<u64>) {
    let daemon = world.daemon();
    let mut request = daemon
        .http()
        .get(format!("{}/v2/events{query}", daemon.base()))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.expect("GET /v2/events");
    assert_eq!(response.status().as_u16(), 200, "GET /v2/events{query}");
    let stream = &mut world.stream;
    stream.response = Some(response);
    stream.buffer.clear();
    stream.ready.clear();
}

async fn journal_seq(world: &PoolWorld) -> u64 {
    let answer = world.peek(Method::GET, "/health").await;
    answer.body["journal_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no journal_seq in {}", answer.body))
}

#[given("a client follows the event stream")]
async fn follows(world: &mut PoolWorld) {
    connect(world, "", None).await;
}

#[given(expr = "a client follows the event stream from seq {int}")]
async fn follows_from(world: &mut PoolWorld, seq: u64) {
    connect(world, &format!("?since={seq}"), None).await;
}

#[given(expr = "the client has received {int} event(s) and disconnected")]
async fn received_and_disconnected(world: &mut PoolWorld, n: usize) {
    for _ in 0..n {
        world.stream.next().await;
    }
    world.stream.response = None;
}

#[when("the client reconnects with the last id it received")]
async fn reconnects_with_last_id(world: &mut PoolWorld) {
    let last = world.stream.last_id().expect("no event received yet");
    connect(world, "", Some(last)).await;
}

#[when("the client reconnects with ?since= the next seq")]
async fn reconnects_with_since(world: &mut PoolWorld) {
    let last = world.stream.last_id().expect("no event received yet");
    connect(world, &format!("?since={}", last + 1), None).await;
}

#[then(expr = "the stream delivers {string} of pool {string} in this order")]
async fn delivers_in_order(world: &mut PoolWorld, kinds: String, pool: String) {
    let wanted: Vec<&str> = kinds.split(',').map(str::trim).collect();
    let mut seen: Vec<String> = Vec::new();
    let mut next = 0;
    while next < wanted.len() {
        let message = world.stream.next().await;
        if message.data["pool_id"] != pool.as_str() {
            continue;
        }
        seen.push(message.event.clone());
        if message.event == wanted[next] {
            next += 1;
        }
    }
    assert_eq!(
        seen.last().map(String::as_str),
        wanted.last().copied(),
        "pool {pool}: streamed {seen:?}"
    );
}

#[then("the stream's ids are consecutive seqs")]
async fn ids_consecutive(world: &mut PoolWorld) {
    let ids: Vec<u64> = world.stream.received.iter().filter_map(|m| m.id).collect();
    assert!(!ids.is_empty(), "nothing received");
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids not consecutive: {ids:?}"
    );
    for message in &world.stream.received {
        assert_eq!(message.data["seq"].as_u64(), message.id, "{message:?}");
        assert_eq!(message.data["event"]["kind"], message.event.as_str());
    }
}

#[then("the client has received every seq from 1 to the daemon's journal seq exactly once")]
async fn every_seq_once(world: &mut PoolWorld) {
    let last = journal_seq(world).await;
    while world.stream.last_id() < Some(last) {
        world.stream.next().await;
    }
    let ids: Vec<u64> = world.stream.received.iter().filter_map(|m| m.id).collect();
    let expected: Vec<u64> = (1..=last).collect();
    assert_eq!(ids, expected, "received seqs");
}

#[when("the list of pools at the noted seq is requested")]
async fn list_at_noted(world: &mut PoolWorld) {
    let seq = world.noted_seq.expect("no journal seq was noted");
    world
        .request(Method::GET, &format!("/v2/pools?at_seq={seq}"), Body::Empty)
        .await;
}

#[then(expr = "the answer lists pool {string} with {string} {json}")]
async fn lists_pool_with(
    world: &mut PoolWorld,
    pool: String,
    field: String,
    value: crate::steps::params::Json,
) {
    let body = &world.answer().body;
    let listed = body
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["pool_id"] == pool.as_str()))
        .unwrap_or_else(|| panic!("pool {pool} not listed: {body}"));
    assert_eq!(listed[field.as_str()], value.0, "{field} of {listed}");
}
