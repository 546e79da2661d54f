Feature: Why a pool is in its phase
  GET /v2/pools/{id}/explain answers why a pool is in its phase, from the journal: since when
  (seq and time), the steps that led there (each with its seq and time), what the daemon does
  next and when (a time it recorded: the restart's not-before, the breaker's half-open time,
  a drain's deadline), and what an operator can do. `?at_seq=N` explains the pool as it was
  after event N. `pool-managerd explain ID` prints the same, asking the daemon (`--addr`) or
  reading its journal offline (`--journal-dir`, read-only): both are the core's explanation
  of the same history, so they agree. `pool-managerd status` shows one line of it, in its
  `WHY` column, for each pool that is not ready. An unknown pool is POOL_NOT_FOUND.

  The daemons here run on a manual clock, which only the steps move.

  Scenario: A crash-looping pool's explanation names its failures and the trial time
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms        | 1000   |
      | breaker.failure_threshold | 3      |
      | breaker.open_ms           | 300000 |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 1 time, each failing
    Then pool "p1" reaches phase "circuit_open"
    When a client sends GET "/v2/pools/p1/explain"
    Then the answer is 200
    And the answer's "pool_id" is "p1"
    And the answer's "phase" is "circuit_open"
    And the answer's "why" mentions "3 consecutive `crash` failures"
    And the explanation names the seq of every failure of pool "p1"
    And the explanation's next step is at the half-open time of pool "p1"
    And the explanation offers "POST /v2/pools/p1/breaker/reset"
    And the explanation's chain ends with the "CircuitOpened" of pool "p1"
    And `pool-managerd explain p1` against the daemon prints the half-open time of pool "p1"
    And `pool-managerd explain p1 --json` on the daemon's journal answers what the daemon answered
    And `pool-managerd status` shows why pool "p1" is not ready: "circuit open since"

  Scenario: A pool in backoff: which restart, and when
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms | 1000 |
      | backoff.jitter     | 0.1  |
    And pool "p1" is crash-looping with a switchable engine-sim started with "--crash-after-ms 0 --exit-code 3"
    Then restart 2 of pool "p1" was scheduled about 1000 ms after a "crash" failure
    When a client sends GET "/v2/pools/p1/explain"
    Then the answer is 200
    And the answer's "phase" is "backoff"
    And the answer's "why" mentions "restart attempt 2"
    And the explanation's next step is at the restart time of pool "p1"
    And the explanation offers "POST /v2/pools/p1/stop"
    And `pool-managerd status` shows why pool "p1" is not ready: "backing off"

  Scenario: A drain forced at its deadline names the leases it dropped
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And pool "p1" is asked to drain within 300 ms
    Then pool "p1" reaches phase "stopped"
    When a client sends GET "/v2/pools/p1/explain"
    Then the answer is 200
    And the answer's "phase" is "stopped"
    And the answer's "why" mentions "force-stopped"
    And the explanation's why names lease "A" of pool "p1"
    And the explanation offers "POST /v2/pools/p1/preload"

  Scenario: An earlier seq explains the pool as it was then
    Given a running daemon
    And a ready pool "p1" with 2 slots
    When the explanation of pool "p1" at its first "PreloadRequested" is requested
    Then the answer is 200
    And the answer's "phase" is "starting"
    And the explanation is as of the first "PreloadRequested" of pool "p1"
    When a client sends GET "/v2/pools/p1/explain"
    Then the answer's "phase" is "ready"
    And the answer's "why" mentions "serving since"

  Scenario: An unknown pool is not found
    Given a running daemon
    When a client sends GET "/v2/pools/ghost/explain"
    Then the answer is 404 with code "POOL_NOT_FOUND"
    And the answer's "error" mentions "ghost"
