Feature: Circuit breaker
  After failure_threshold consecutive failures of one class the breaker opens: no restart is
  attempted and preloads, leases and reloads are refused with CIRCUIT_OPEN (503, with a
  Retry-After of the whole seconds left, rounded up) until open_ms has passed. Then it is
  half-open and allows one trial start: a trial that runs stable for close_after_stable_ms
  closes it; a trial that fails opens it again for twice as long. An operator's reset closes
  it at once and starts the engine. GPU faults (CUDA errors, VRAM OOM, Xid) are counted apart
  from other failures, and the breaker records which class opened it.

  The daemons here run on a manual clock, which only the steps move. A "switchable" engine
  reads its engine-sim flags from a file at each start, so that the scenario decides what
  the next start does: crash, fail on the GPU, or serve.

  Scenario: The breaker opens after the threshold of consecutive failures
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms        | 1000   |
      | breaker.failure_threshold | 3      |
      | breaker.open_ms           | 300000 |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 1 time, each failing
    Then pool "p1" reaches phase "circuit_open"
    And pool "p1" shows "breaker" "open"
    And pool "p1" is not live and not ready
    And the last "CircuitOpened" of pool "p1" has "failures" 3
    And the last "CircuitOpened" of pool "p1" has "class" "other"
    And the breaker of pool "p1" opened at its failure, for 300000 ms
    And the events of pool "p1" include 2 "RestartScheduled"
    And the events of pool "p1" end with "PreloadFailed, CircuitOpened"

  Scenario: While the breaker is open nothing is started and preloads are refused
    Given a running daemon on a manual clock, configured with:
      | breaker.failure_threshold | 1     |
      | breaker.open_ms           | 60000 |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    Then pool "p1" shows "phase" "circuit_open"
    And the events of pool "p1" include 0 "RestartScheduled"
    When the clock reaches 1 ms before the half-open time of pool "p1"
    Then pool "p1" stays in phase "circuit_open" with 1 engine spawned
    And a preload of pool "p1" is refused with 503 "CIRCUIT_OPEN"
    And the answer's "error" mentions "p1"
    And pool "p1" stays in phase "circuit_open" with 1 engine spawned

  Scenario: After open_ms the breaker half-opens and allows one trial start
    Given a running daemon on a manual clock, configured with:
      | breaker.failure_threshold | 1     |
      | breaker.open_ms           | 60000 |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the clock reaches the half-open time of pool "p1"
    Then the breaker of pool "p1" half-opened at the half-open time its opening set
    And the half-open trial of pool "p1" started at its half-open time
    And the events of pool "p1" include 2 "EngineSpawned"
    And the events of pool "p1" include, in this order, "CircuitOpened, CircuitHalfOpened, EngineStartRequested, EngineSpawned"

  Scenario: A trial that runs stable closes the breaker
    Given a running daemon on a manual clock, configured with:
      | breaker.failure_threshold     | 2      |
      | breaker.open_ms               | 60000  |
      | breaker.close_after_stable_ms | 30000  |
      | backoff.initial_ms            | 1000   |
      | backoff.jitter                | 0      |
    And pool "p1" is crash-looping with a switchable engine-sim started with "--crash-after-ms 0 --exit-code 3"
    Then pool "p1" reaches phase "circuit_open"
    When the next engines of pool "p1" are started with "--parallel 2"
    And the clock reaches the half-open time of pool "p1"
    Then pool "p1" becomes ready
    And pool "p1" shows "breaker" "half_open"
    And the last "PoolReady" of pool "p1" has "breaker_close_at_ms" 1700000090000
    When 29999 ms pass
    Then pool "p1" stays in phase "ready" with 3 engines spawned
    And pool "p1" shows "breaker" "half_open"
    When the clock reaches the breaker-close time of pool "p1"
    Then the breaker of pool "p1" closed at the breaker-close time its trial's readiness set
    And pool "p1" shows "breaker" "closed"
    And pool "p1" is ready with 2 slots

  Scenario: A trial that fails opens the breaker again for twice as long
    Given a running daemon on a manual clock, configured with:
      | breaker.failure_threshold | 1     |
      | breaker.open_ms           | 60000 |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the clock reaches the half-open time of pool "p1"
    Then the events of pool "p1" include 2 "CircuitOpened"
    And pool "p1" reaches phase "circuit_open"
    And the breaker of pool "p1" opened at its failure, for 120000 ms
    When the clock reaches the half-open time of pool "p1"
    Then the events of pool "p1" include 3 "CircuitOpened"
    And the breaker of pool "p1" opened at its failure, for 240000 ms

  Scenario: An operator's reset closes the breaker at once and starts the engine
    Given a running daemon on a manual clock, configured with:
      | breaker.failure_threshold | 1      |
      | breaker.open_ms           | 300000 |
    And pool "p1" is crash-looping with a switchable engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the next engines of pool "p1" are started with "--parallel 1"
    And the breaker of pool "p1" is reset
    Then the answer is 200
    And the answer's "breaker" is "closed"
    And pool "p1" becomes ready
    And pool "p1" shows "breaker" "closed"
    And the last "CircuitReset" of pool "p1" has "by" "api"
    And the events of pool "p1" include, in this order, "CircuitOpened, CircuitReset, EngineStartRequested, EngineSpawned, PoolReady"
    And the events of pool "p1" include 0 "CircuitHalfOpened"

  Scenario: Resetting a closed breaker changes nothing
    Given a running daemon on a manual clock
    And a ready pool "p1" with 1 slot
    When the breaker of pool "p1" is reset
    Then the answer is 200
    And the answer's "breaker" is "closed"
    And the events of pool "p1" include 0 "CircuitReset"
    And pool "p1" is ready with 1 slot

  Scenario Outline: The failure threshold is configurable
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms        | 1000        |
      | breaker.failure_threshold | <threshold> |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When pool "p1" fails <threshold> times in all, each restart let through at its time
    Then pool "p1" reaches phase "circuit_open"
    And the last "CircuitOpened" of pool "p1" has "failures" <threshold>
    And the events of pool "p1" include <restarts> "RestartScheduled"

    Examples:
      | threshold | restarts |
      | 2         | 1        |
      | 4         | 3        |

  Scenario: GPU faults are counted apart from other failures
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms        | 1000 |
      | breaker.failure_threshold | 3    |
    And pool "p1" is crash-looping with a switchable engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the next engines of pool "p1" are started with "--cuda-error-after-ms 0"
    And the restarts of pool "p1" are let through 2 times, each failing
    Then pool "p1" shows "breaker" "closed"
    And pool "p1" shows "crash_count" 4
    When the restarts of pool "p1" are let through 1 time, each failing
    Then pool "p1" reaches phase "circuit_open"
    And pool "p1" shows "crash_count" 5
    And the last "CircuitOpened" of pool "p1" has "class" "gpu_fault"
    And the last "CircuitOpened" of pool "p1" has "failures" 3
    And the events of pool "p1" include 4 "RestartScheduled"
    And the last "RestartScheduled" of pool "p1" has "reason" "cuda_error"

  Scenario: GPU faults interleaved with other failures still open the breaker as GPU faults
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms        | 1000 |
      | breaker.failure_threshold | 3    |
    And pool "p1" is crash-looping with a switchable engine-sim started with "--cuda-error-after-ms 0"
    When the next engines of pool "p1" are started with "--crash-after-ms 0 --exit-code 3"
    And the restarts of pool "p1" are let through 1 time, each failing
    Then pool "p1" shows "breaker" "closed"
    And the last "RestartScheduled" of pool "p1" has "reason" "crash"
    When the next engines of pool "p1" are started with "--cuda-error-after-ms 0"
    And the restarts of pool "p1" are let through 1 time, each failing
    Then pool "p1" reaches phase "circuit_open"
    And the last "CircuitOpened" of pool "p1" has "class" "gpu_fault"
    And the last "CircuitOpened" of pool "p1" has "failures" 3
    And pool "p1" shows "crash_count" 4

  Scenario: While the breaker is open, refusals say when it half-opens (Retry-After)
    Given a running daemon on a manual clock, configured with:
      | breaker.failure_threshold | 1     |
      | breaker.open_ms           | 60000 |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    Then pool "p1" shows "phase" "circuit_open"
    And a preload of pool "p1" is refused with 503 "CIRCUIT_OPEN"
    And the answer says to retry after 60 seconds
    When 1500 ms pass
    And the orchestrator takes lease "A" on pool "p1"
    Then the answer is 503 with code "CIRCUIT_OPEN"
    And the answer says to retry after 59 seconds
    When the clock reaches 1 ms before the half-open time of pool "p1"
    Then a preload of pool "p1" is refused with 503 "CIRCUIT_OPEN"
    And the answer says to retry after 1 second
    And pool "p1" stays in phase "circuit_open" with 1 engine spawned
