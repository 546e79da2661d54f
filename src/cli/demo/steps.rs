//! The demo's steps 1 to 7: each a few API calls, and what they answered.

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};

use super::{free_port, step, Client};

/// Steps 1 to 7 of the demo, each a few API calls and what they answered.
pub(super) async fn script(client: &Client, dir: &std::path::Path) -> anyhow::Result<()> {
    preload_two(client).await?;
    leases(client).await?;
    failed_preload(client).await?;
    crash_loop(client, dir).await?;
    drain(client).await?;
    reload(client, dir).await
}

/// Step 1: two engine-sim pools preloaded, each answered once its engine is healthy.
async fn preload_two(client: &Client) -> anyhow::Result<()> {
    use reqwest::Method;
    println!("1. Preload two engine-sim pools (each waits until its engine answers /health 200)");
    for (pool, sim) in [
        ("chat-a", ["--parallel", "4", "--load-ms", "400"]),
        ("chat-b", ["--parallel", "2", "--load-ms", "800"]),
    ] {
        let body = json!({"prepared": client.prepared(pool, free_port()?, &sim)?});
        let placed = body["prepared"]["device_mask"]
            .as_str()
            .map(|mask| format!(", device_mask {mask}"))
            .unwrap_or_default();
        let (status, answer) = client
            .call(
                Method::POST,
                &format!("/v2/pools/{pool}/preload"),
                Some(body),
            )
            .await?;
        if status != 200 {
            bail!("preload of {pool} answered {status}: {answer}");
        }
        step(&format!(
            "POST /v2/pools/{pool}/preload -> {status}: ready in {} ms, pid {}, {} slots{placed}, handoff {}",
            answer["ready_ms"], answer["pid"], answer["slots_total"], answer["handoff_path"].as_str().unwrap_or("-")
        ));
    }
    Ok(())
}

/// Steps 2 and 3: leases taken (the last ones refused when the slots run out), some returned.
async fn leases(client: &Client) -> anyhow::Result<()> {
    use reqwest::Method;
    println!("\n2. Take leases (each is a durable journal append before the answer)");
    let mut leases = Vec::new();
    for pool in ["chat-a", "chat-a", "chat-a", "chat-b", "chat-b", "chat-b"] {
        let (status, answer) = client
            .call(Method::POST, &format!("/v2/pools/{pool}/leases"), None)
            .await?;
        match status {
            201 => {
                step(&format!(
                    "POST /v2/pools/{pool}/leases -> 201 {} (active {}, free {})",
                    answer["lease_id"].as_str().unwrap_or("?"),
                    answer["active_leases"],
                    answer["slots_free"]
                ));
                leases.push((
                    pool,
                    answer["lease_id"].as_str().unwrap_or_default().to_string(),
                ));
            }
            _ => step(&format!(
                "POST /v2/pools/{pool}/leases -> {status} {}: {}",
                answer["code"].as_str().unwrap_or("?"),
                answer["error"].as_str().unwrap_or("")
            )),
        }
    }
    println!("\n3. Return some of them");
    for (pool, lease) in leases.iter().skip(1) {
        let (status, answer) = client
            .call(
                Method::DELETE,
                &format!("/v2/pools/{pool}/leases/{lease}"),
                None,
            )
            .await?;
        step(&format!(
            "DELETE /v2/pools/{pool}/leases/{lease} -> {status} (active {}, free {})",
            answer["active_leases"], answer["slots_free"]
        ));
    }
    Ok(())
}

/// Step 4: a preload whose engine crashes while loading answers the crash and its log tail.
async fn failed_preload(client: &Client) -> anyhow::Result<()> {
    use reqwest::Method;
    println!("\n4. A preload that fails: the engine crashes while loading");
    let body = json!({"prepared": client.prepared("broken", free_port()?, &["--load-ms", "2000", "--crash-after-ms", "150", "--exit-code", "3"])?});
    let (status, answer) = client
        .call(Method::POST, "/v2/pools/broken/preload", Some(body))
        .await?;
    step(&format!(
        "POST /v2/pools/broken/preload -> {status} {}",
        answer["code"].as_str().unwrap_or("?")
    ));
    for line in answer["error"].as_str().unwrap_or("").lines() {
        step(&format!("    {line}"));
    }
    if status == 200 {
        bail!("the broken engine's preload should have failed");
    }
    let (_, health) = client
        .call(Method::GET, "/v2/pools/broken/health", None)
        .await?;
    step(&format!(
        "GET /v2/pools/broken/health -> live {}, ready {}",
        health["live"], health["ready"]
    ));
    Ok(())
}

async fn drain(client: &Client) -> anyhow::Result<()> {
    use reqwest::Method;
    println!("\n6. Drain chat-a: no new leases, stop once the last one is returned");
    let (status, _) = client
        .call(
            Method::POST,
            "/v2/pools/chat-a/drain",
            Some(json!({"deadline_ms": 30_000})),
        )
        .await?;
    step(&format!(
        "POST /v2/pools/chat-a/drain -> {status} (1 lease still held)"
    ));
    let (status, answer) = client
        .call(Method::POST, "/v2/pools/chat-a/leases", None)
        .await?;
    step(&format!(
        "POST /v2/pools/chat-a/leases -> {status} {}",
        answer["code"].as_str().unwrap_or("?")
    ));
    let (_, events) = client
        .call(Method::GET, "/v2/pools/chat-a/events", None)
        .await?;
    let held = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["event"]["kind"] == "LeaseGranted")
        .filter_map(|e| e["event"]["lease_id"].as_str())
        .find(|id| {
            !events
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["event"]["kind"] == "LeaseReleased" && e["event"]["lease_id"] == *id)
        })
        .map(str::to_string);
    if let Some(lease) = held {
        let (status, _) = client
            .call(
                Method::DELETE,
                &format!("/v2/pools/chat-a/leases/{lease}"),
                None,
            )
            .await?;
        step(&format!(
            "DELETE /v2/pools/chat-a/leases/{lease} -> {status}: the last lease"
        ));
    }
    let stopped = wait_pool(client, "chat-a", "stopped", |s| s["phase"] == "stopped").await?;
    step(&format!(
        "chat-a: phase {}, draining {}, ready {} (DrainCompleted, graceful)",
        stopped["phase"], stopped["draining"], stopped["ready"]
    ));
    Ok(())
}

async fn reload(client: &Client, dir: &std::path::Path) -> anyhow::Result<()> {
    use reqwest::Method;
    println!(
        "\n7. Reload chat-c onto another model without a gap (surge), then onto one that fails to\n   load, beside the old engine and then draining it first"
    );
    let models = dir.join("models");
    std::fs::create_dir_all(&models)?;
    let (v1, v2, bad) = (
        models.join("v1.gguf"),
        models.join("v2.gguf"),
        models.join("v3.gguf"),
    );
    std::fs::write(&v1, "model v1\n")?;
    std::fs::write(&v2, "model v2\n")?;
    std::fs::write(&bad, "broken\n")?;
    let v1_path = v1.display().to_string();
    let mut prepared = client.prepared(
        "chat-c",
        free_port()?,
        &["--check-model", "--load-ms", "300"],
    )?;
    prepared["model_path"] = json!(v1_path);
    if let Some(flags) = prepared["flags"].as_array_mut() {
        flags[4] = json!(v1_path); // the -m flag follows the model on a reload
    }
    let (status, answer) = client
        .call(
            Method::POST,
            "/v2/pools/chat-c/preload",
            Some(json!({"prepared": prepared})),
        )
        .await?;
    step(&format!(
        "POST /v2/pools/chat-c/preload (model v1) -> {status}, pid {}",
        answer["pid"]
    ));
    let reloads = [
        (&v2, "a good model", "auto"),
        (&bad, "a model that fails to load", "surge"),
        (&bad, "the same, draining first", "drain_first"),
    ];
    for (model, what, strategy) in reloads {
        let body = json!({
            "new_model_ref": model.display().to_string(),
            "drain_deadline_ms": 5_000,
            "strategy": strategy,
        });
        let (status, answer) = client
            .call(Method::POST, "/v2/pools/chat-c/reload", Some(body))
            .await?;
        // After a surge's switch the old engine ends on its own (it held no lease); the pool
        // takes the next reload once it is gone.
        let now = wait_pool(client, "chat-c", "the old engine gone", |s| {
            s["retiring"].is_null()
        })
        .await?;
        print_reload(what, status, &answer, &now);
    }
    Ok(())
}

/// One line of step 7: a reload's answer and what the pool serves after it.
fn print_reload(what: &str, status: u16, answer: &Value, now: &Value) {
    let serving = now["model_ref"]
        .as_str()
        .unwrap_or("?")
        .rsplit('/')
        .next()
        .unwrap_or("?")
        .to_string();
    match status {
        200 => step(&format!(
            "POST .../reload ({what}) -> 200 in {} ms, strategy {} ({}): serving {serving}, pid {}",
            answer["duration_ms"],
            answer["strategy"].as_str().unwrap_or("?"),
            answer["strategy_reason"].as_str().unwrap_or("?"),
            now["pid"]
        )),
        _ => step(&format!(
            "POST .../reload ({what}) -> {status} {} rolled_back {}: serving {serving} again, pid {}",
            answer["code"].as_str().unwrap_or("?"),
            answer["rolled_back"],
            now["pid"]
        )),
    }
}

/// Polls `GET /v2/pools/{pool}` until `check` holds (bounded).
async fn wait_pool(
    client: &Client,
    pool: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = client
            .call(reqwest::Method::GET, &format!("/v2/pools/{pool}"), None)
            .await?;
        if check(&status) {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            bail!("pool {pool}: {what} not reached in 30 s: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why the crash-looping pool is where it is: `GET /v2/pools/flaky/explain` (what
/// `pool-managerd explain flaky` prints): the failures by seq, the half-open trial's time.
async fn explain_flaky(client: &Client) -> anyhow::Result<()> {
    let (status, answer) = client
        .call(reqwest::Method::GET, "/v2/pools/flaky/explain", None)
        .await?;
    step(&format!(
        "GET /v2/pools/flaky/explain -> {status} (what `pool-managerd explain flaky` prints):"
    ));
    step(&format!("  why: {}", answer["why"].as_str().unwrap_or("?")));
    if let Some(next) = answer["next"][0]["text"].as_str() {
        step(&format!("  next: {next}"));
    }
    if let Some(action) = answer["actions"][0].as_object() {
        step(&format!(
            "  you can: {}: {}",
            action["text"].as_str().unwrap_or("?"),
            action["request"].as_str().unwrap_or("-")
        ));
    }
    Ok(())
}

async fn crash_loop(client: &Client, dir: &std::path::Path) -> anyhow::Result<()> {
    use reqwest::Method;
    println!("\n5. A crash loop: the model fails to load until an operator fixes it");
    let marker = dir.join("flaky-model-is-broken");
    std::fs::write(&marker, b"remove me to fix the model\n")?;
    let marker_arg = marker.display().to_string();
    let body = json!({"prepared": client.prepared("flaky", free_port()?, &["--load-ms", "1000", "--fail-while-file-exists", &marker_arg])?});
    let (status, answer) = client
        .call(Method::POST, "/v2/pools/flaky/preload", Some(body))
        .await?;
    step(&format!(
        "POST /v2/pools/flaky/preload -> {status} {}",
        answer["code"].as_str().unwrap_or("?")
    ));
    let open = wait_pool(client, "flaky", "the breaker open", |s| {
        s["breaker"] == "open"
    })
    .await?;
    let (_, events) = client
        .call(Method::GET, "/v2/pools/flaky/events", None)
        .await?;
    let delays: Vec<String> = events
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["event"]["kind"] == "RestartScheduled")
                .map(|e| format!("{} ms", e["event"]["delay_ms"]))
                .collect()
        })
        .unwrap_or_default();
    step(&format!(
        "restarts: {} (the first at once, then backing off, each doubling, with jitter)",
        delays.join(", ")
    ));
    step(&format!(
        "after {} failures the breaker opened: phase {}, breaker {}",
        open["crash_count"], open["phase"], open["breaker"]
    ));
    explain_flaky(client).await?;
    let again = json!({"prepared": client.prepared("flaky", free_port()?, &[])?});
    let (status, answer, retry_after) = client
        .call_with_retry_after(Method::POST, "/v2/pools/flaky/preload", Some(again))
        .await?;
    step(&format!(
        "POST /v2/pools/flaky/preload while open -> {status} {} (Retry-After: {} s, until the breaker half-opens)",
        answer["code"].as_str().unwrap_or("?"),
        retry_after.as_deref().unwrap_or("none")
    ));
    std::fs::remove_file(&marker)?;
    step("the operator fixes the model (removes the marker file) and resets the breaker:");
    let (status, answer) = client
        .call(Method::POST, "/v2/pools/flaky/breaker/reset", None)
        .await?;
    step(&format!(
        "POST /v2/pools/flaky/breaker/reset -> {status}: breaker {}",
        answer["breaker"]
    ));
    let ready = wait_pool(client, "flaky", "ready again", |s| s["ready"] == true).await?;
    step(&format!(
        "the restart is healthy: phase {}, pid {}, restarts {}, breaker {}",
        ready["phase"], ready["pid"], ready["restart_count"], ready["breaker"]
    ));
    Ok(())
}
