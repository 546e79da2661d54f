Feature: Progress, not just health
  While a pool holds leases, its engine's progress is probed every
  health.progress_interval_ms (llama-server's /slots here: engine-sim answers like it). An
  engine that reports work in progress and makes none for health.stall_after_ms is a crash
  with reason "stalled", although its /health still answers 200: it is stopped, counted and
  restarted by the restart policy. An engine that holds leases but reports nothing in progress
  is idle, not stalled.

  An engine may declare its own progress request instead (prepared.progress: path, method,
  body, expect_status): each answer with the expected status within health.stall_after_ms is
  progress, anything else is none.

  (These daemons run on the real clock: the scenarios compare the times of their events.)

  Scenario: An engine that reports work and makes none, with a lease held, is stopped as stalled and restarted
    Given a running daemon configured with:
      | health.progress_interval_ms | 50  |
      | health.stall_after_ms       | 500 |
      | stop.grace_ms               | 300 |
      | backoff.initial_ms          | 500 |
    And pool "p1" is ready with an engine-sim started with "--stall-after-ms 300"
    And the orchestrator took lease "a" on pool "p1"
    When the engine of pool "p1" is found stalled
    Then the last "EngineStopRequested" of pool "p1" has "reason.failure.reason" "stalled"
    And the last "EngineStopRequested" of pool "p1" has "reason.failure.detail" containing "slot 0 (task 0): 0 tokens decoded"
    And the last "RestartScheduled" of pool "p1" has "reason" "stalled"
    And pool "p1" shows "crash_count" 1
    When the metrics are scraped
    Then the metric "engine_crash_total" of pool "p1" with reason "stalled" is 1
    And the events of pool "p1" include 2 "EngineSpawned"
    And pool "p1" becomes ready
    And pool "p1" shows "restart_count" 1

  Scenario: An idle engine holding a lease is not stalled
    Given a running daemon configured with:
      | health.progress_interval_ms | 50  |
      | health.stall_after_ms       | 400 |
    And pool "p1" is ready with an engine-sim started with "--stall-after-ms 3000"
    And the orchestrator took lease "a" on pool "p1"
    When the engine of pool "p1" is found stalled
    Then pool "p1" held a lease for more than 1000 ms before its engine stalled 3000 ms after its spawn
    And pool "p1" was stopped as stalled no sooner than 3000 ms after its engine was spawned

  Scenario: An engine that declares its progress request is stalled once that request stops answering
    Given a running daemon configured with:
      | health.progress_interval_ms | 50  |
      | health.stall_after_ms       | 500 |
      | stop.grace_ms               | 300 |
      | backoff.initial_ms          | 500 |
    And pool "p1" is prepared as an engine-sim started with "--stall-after-ms 3000 --parallel 4"
    And the prepared engine of pool "p1" has "progress.path" set to "/completion"
    And the prepared engine of pool "p1" has "progress.method" set to "POST"
    And the prepared engine of pool "p1" has "progress.body" set to "{}"
    When pool "p1" is preloaded
    Then the answer is 200
    Given the orchestrator took lease "a" on pool "p1"
    When the engine of pool "p1" is found stalled
    Then pool "p1" held a lease for more than 1000 ms before its engine stalled 3000 ms after its spawn
    And pool "p1" was stopped as stalled no sooner than 3000 ms after its engine was spawned
    And the last "EngineStopRequested" of pool "p1" has "reason.failure.detail" containing "POST http://127.0.0.1:"
    And the last "EngineStopRequested" of pool "p1" has "reason.failure.detail" containing "/completion timed out after 500 ms"
    And pool "p1" becomes ready
    And the events of pool "p1" include 2 "EngineSpawned"

  Scenario: A declared progress request is checked at the preload
    Given a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "progress.path" set to "completion"
    When pool "p1" is preloaded
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "prepared.progress.path"
