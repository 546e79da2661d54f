Feature: Metrics and logs
  GET /metrics serves the series of SPEC section 11 in Prometheus' text format. Counters and
  histograms are derived from the events the daemon appends (never from the start-up replay),
  so they count since the daemon's process started; gauges are read from the registry at each
  scrape, so they are right after a restart and gone with a removed pool. Every pool event is
  logged once, with the pool's engine, version, mask, model, restarts, backoff and last error
  where known, a crash as a warning and the breaker opening as an error.

  Scenario: A preload counts a success and shows the pool ready with its slots
    Given a running daemon
    And pool "p1" is ready with an engine-sim started with "--parallel 3"
    When the metrics are scraped
    Then the metric "pool_preload_total" of pool "p1" with outcome "success" is 1
    And the metric "pool_preload_duration_seconds_count" of pool "p1" is 1
    And the metric "pool_ready" of pool "p1" is 1
    And the metric "pool_slots_total" of pool "p1" is 3
    And the metric "pool_slots_free" of pool "p1" is 3
    And the metric "pool_active_leases" of pool "p1" is 0
    And the metric "circuit_breaker_state" of pool "p1" is 0
    And the metric "journal_last_seq" is the daemon's journal seq

  Scenario: A lease moves the slot gauges
    Given a running daemon
    And pool "p1" is ready with an engine-sim started with "--parallel 2"
    And the orchestrator took lease "a" on pool "p1"
    When the metrics are scraped
    Then the metric "pool_active_leases" of pool "p1" is 1
    And the metric "pool_slots_free" of pool "p1" is 1

  # The first crash is restarted at once (a backoff of 0 s), the second waits 600 s.
  Scenario: A crash counts its reason and the backoff chosen
    Given a running daemon configured with:
      | backoff.initial_ms | 600000 |
      | backoff.max_ms     | 600000 |
      | backoff.jitter     | 0      |
    And pool "p1" is ready with an engine-sim started with "--crash-after-ms 1000 --exit-code 3"
    Then pool "p1" settles in backoff
    When the metrics are scraped
    Then the metric "engine_crash_total" of pool "p1" with reason "crash" is 2
    And the metric "restart_backoff_seconds_sum" of pool "p1" is 600
    And the metric "restart_backoff_seconds_count" of pool "p1" is 2
    And the metric "engine_restart_total" of pool "p1" is 1
    And the metric "pool_ready" of pool "p1" is 0
    And the metric "pool_slots_free" of pool "p1" is 0

  Scenario: A drain counts its outcome and duration
    Given a running daemon
    And pool "p1" is ready with an engine-sim started with "--parallel 2"
    When the orchestrator drains pool "p1" with a deadline of 5000 ms
    Then pool "p1" reaches phase "stopped"
    When the metrics are scraped
    Then the metric "pool_drain_total" of pool "p1" with outcome "graceful" is 1
    And the metric "pool_drain_duration_seconds_count" of pool "p1" is 1
    And the metric "pool_ready" of pool "p1" is 0

  Scenario: The breaker opening shows in its state and its counter
    Given a running daemon on a manual clock, configured with:
      | breaker.failure_threshold | 1     |
      | breaker.open_ms           | 60000 |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    Then pool "p1" reaches phase "circuit_open"
    When the metrics are scraped
    Then the metric "circuit_breaker_state" of pool "p1" is 1
    And the metric "circuit_breaker_open_total" of pool "p1" is 1
    And the metric "pool_preload_total" of pool "p1" with outcome "failure" is 1
    And the metric "engine_crash_total" of pool "p1" with reason "crash" is 1

  Scenario: A restart of the daemon does not count the replayed events again but restores the gauges
    Given a running daemon
    And pool "p1" is ready with an engine-sim started with "--parallel 2"
    When the daemon is restarted over the same journal
    And the metrics are scraped
    Then the metrics have no "pool_preload_total" of pool "p1"
    And the metric "pool_slots_total" of pool "p1" is 2
    And the metric "pool_ready" of pool "p1" is 1
    And the metric "journal_last_seq" is the daemon's journal seq

  Scenario: A removed pool's gauges are gone
    Given a running daemon
    And pool "p1" is ready with an engine-sim started with "--parallel 2"
    When pool "p1" is removed
    And the metrics are scraped
    Then the metrics have no gauge of pool "p1"
    And the metric "pool_preload_total" of pool "p1" with outcome "success" is 1

  Scenario: Pool events are logged with the pool's fields at the level of the event
    Given a running daemon in its own process, configured with:
      | backoff.initial_ms        | 100 |
      | backoff.jitter            | 0   |
      | breaker.failure_threshold | 2   |
    And pool "p1" is ready with an engine-sim started with "--crash-after-ms 1000 --exit-code 3"
    Then pool "p1" reaches phase "circuit_open"
    And the daemon's log has an INFO line for the "PoolReady" of pool "p1" with the fields "engine, engine_version, model_id, restart_count"
    And the daemon's log has a WARN line for the "EngineExited" of pool "p1" with the fields "engine, engine_version, model_id, restart_count, last_error, reason"
    And the daemon's log has an INFO line for the "RestartScheduled" of pool "p1" with the fields "backoff_ms, restart_count"
    And the daemon's log has an ERROR line for the "CircuitOpened" of pool "p1" with the fields "engine, model_id, restart_count, last_error"

  Scenario: A reload counts its outcome and its duration
    Given a running daemon on a node whose NVIDIA driver lists 1 GPU
    And a model file "a.gguf" that loads
    And a model file "b.gguf" that loads
    And pool "p1" is ready serving the model "a.gguf"
    When pool "p1" is reloaded to the model "b.gguf"
    Then the answer is 200
    When the metrics are scraped
    Then the metric "pool_reload_total" of pool "p1" with outcome "success" is 1
    And the metric "pool_reload_duration_seconds_count" of pool "p1" is 1
    And the metric "pool_reload_duration_seconds_sum" of pool "p1" is the "duration_ms" of its last "ReloadSucceeded", in seconds

  Scenario: A restart storm is counted, opens the breaker and is logged as an error
    Given a running daemon in its own process, configured with:
      | backoff.min_ms            | 100    |
      | backoff.initial_ms        | 100    |
      | backoff.jitter            | 0      |
      | breaker.failure_threshold | 50     |
      | storm.max_restarts        | 1      |
      | storm.window_ms           | 600000 |
    When pool "p1" is preloaded without waiting with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    Then the answer is 202
    And pool "p1" reaches phase "circuit_open"
    And the last "RestartStormDetected" of pool "p1" has "restarts" 2
    And the daemon's log has an ERROR line for the "RestartStormDetected" of pool "p1" with the fields "engine, model_id, restart_count, last_error, hint"
    When the metrics are scraped
    Then the metric "restart_storm_total" of pool "p1" is 1
    And the metric "circuit_breaker_open_total" of pool "p1" is 1
    And the metric "engine_restart_total" of pool "p1" is 2
