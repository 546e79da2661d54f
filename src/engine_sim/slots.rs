//! engine-sim's slots: which slot serves which completion and how far it got, as llama-server's
//! `GET /slots` shows them (`is_processing`; once a slot had a task, `id_task`,
//! `n_prompt_tokens`, `n_prompt_tokens_processed` and `next_token[0].n_decoded`, which
//! advances token by token while a completion is served), and `--stall-after-ms`: from then on
//! slot 0 shows a task processing whose `n_decoded` never moves again, no completion makes
//! progress or ends, and `/health` still answers 200.
//!
//! Owns: the slot table. Never: runs a model; the tokens are counted, not computed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::Sim;

/// One slot's state.
#[derive(Debug, Clone, Default)]
pub(super) struct Slot {
    processing: bool,
    task: Option<Task>,
}

/// The slot's current or last task.
#[derive(Debug, Clone)]
struct Task {
    id: u64,
    n_prompt: u64,
    n_predict: u64,
    n_decoded: u64,
}

/// The slot table, with the task counter.
#[derive(Debug)]
pub(super) struct Slots {
    slots: Mutex<Vec<Slot>>,
    next_task: AtomicU64,
}

impl Slots {
    pub(super) fn new(n: u32) -> Slots {
        Slots {
            slots: Mutex::new(vec![Slot::default(); n as usize]),
            next_task: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the first free slot for a task of `n_prompt` then `n_predict` tokens.
    fn take(&self, n_prompt: u64, n_predict: u64) -> Option<usize> {
        let mut slots = self.lock();
        let (index, slot) = slots.iter_mut().enumerate().find(|(_, s)| !s.processing)?;
        slot.processing = true;
        slot.task = Some(Task {
            id: self.next_task.fetch_add(1, Ordering::SeqCst),
            n_prompt,
            n_predict,
            n_decoded: 0,
        });
        Some(index)
    }

    fn decoded_one(&self, index: usize) {
        if let Some(task) = self.lock().get_mut(index).and_then(|s| s.task.as_mut()) {
            task.n_decoded += 1;
        }
    }

    fn release(&self, index: usize) {
        if let Some(slot) = self.lock().get_mut(index) {
            slot.processing = false;
        }
    }
}

fn stalled(sim: &Sim) -> bool {
    sim.stall_at.is_some_and(|at| Instant::now() >= at)
}

/// `GET /slots`: each slot as llama-server shows it; once stalled, slot 0 processing with a
/// frozen `n_decoded`.
pub(super) async fn slots(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let stalled = stalled(&sim);
    let slots = sim.slots.lock().clone();
    let list: Vec<Value> = slots
        .into_iter()
        .enumerate()
        .map(|(id, mut slot)| {
            if stalled && id == 0 {
                slot.processing = true;
                slot.task.get_or_insert(Task {
                    id: 0,
                    n_prompt: 1,
                    n_predict: 16,
                    n_decoded: 0,
                });
            }
            slot_json(id, &slot, sim.n_ctx)
        })
        .collect();
    Json(json!(list))
}

fn slot_json(id: usize, slot: &Slot, n_ctx: u32) -> Value {
    let mut value = json!({
        "id": id,
        "n_ctx": n_ctx,
        "speculative": false,
        "is_processing": slot.processing,
    });
    if let Some(task) = &slot.task {
        value["id_task"] = json!(task.id);
        value["n_prompt_tokens"] = json!(task.n_prompt);
        value["n_prompt_tokens_processed"] = json!(task.n_prompt);
        value["next_token"] = json!([{
            "has_next_token": slot.processing,
            "has_new_line": false,
            "n_remain": task.n_predict.saturating_sub(task.n_decoded),
            "n_decoded": task.n_decoded,
        }]);
    }
    value
}

/// `POST /completion`: the shape of llama-server's answer (`content`, `tokens_predicted`,
/// `stop`, `model`, ...), with `n_predict` (default 16, at most 4096) words of filler, one
/// every `--token-ms` in a slot of its own (503 when none is free): no model runs here. Once
/// stalled, it never answers.
pub(super) async fn completion(State(sim): State<Arc<Sim>>, body: axum::body::Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let n_predict = request["n_predict"].as_u64().unwrap_or(16).min(4096);
    let n_prompt = request["prompt"]
        .as_str()
        .map_or(1, |p| p.split_whitespace().count().max(1) as u64);
    let Some(index) = sim.slots.take(n_prompt, n_predict) else {
        let body = json!({"error": {"code": 503, "message": "no free slot (engine-sim)",
                          "type": "unavailable_error"}});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    for _ in 0..n_predict {
        if sim.token_ms > 0 {
            tokio::time::sleep(Duration::from_millis(sim.token_ms)).await;
        }
        if stalled(&sim) {
            std::future::pending::<()>().await;
        }
        sim.slots.decoded_one(index);
    }
    sim.slots.release(index);
    let content: String = (0..n_predict).map(|_| " sim").collect();
    let answer = json!({
        "index": 0,
        "content": content,
        "tokens": [],
        "id_slot": index,
        "stop": true,
        "model": sim.model_path,
        "tokens_predicted": n_predict,
        "tokens_evaluated": n_prompt,
        "stop_type": "limit",
        "truncated": false,
    });
    (StatusCode::OK, Json(answer)).into_response()
}
