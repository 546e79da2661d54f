Feature: Restart storms
  Every restart is counted (restart_count) and remembered with its time and cause. When a
  failure comes with more than storm.max_restarts restarts in the sliding window of
  storm.window_ms behind it, the pool is in a restart storm: RestartStormDetected is recorded
  with the count, the window, the storm's dominant cause and a remediation hint for the
  operator, the breaker opens, and the pool's last error says so. Restarts that have slid
  out of the window no longer count. An operator's breaker reset ends it.

  The daemons here run on a manual clock, which only the steps move; delays are constant
  (factor 1, no jitter) so that the restarts fall at known times, and the breaker's
  threshold is high so that only the storm can open it.

  Background:
    Given the daemon is configured with:
      | backoff.initial_ms        | 1000  |
      | backoff.factor            | 1.0   |
      | backoff.jitter            | 0     |
      | backoff.min_ms            | 100   |
      | breaker.failure_threshold | 50    |
      | storm.max_restarts        | 3     |
      | storm.window_ms           | 10000 |

  Scenario: Each restart is counted
    Given a running daemon on a manual clock
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 2 times, each failing
    Then pool "p1" shows "restart_count" 3
    And pool "p1" shows "crash_count" 4
    And the last "EngineSpawned" of pool "p1" has "attempt" 3
    And the events of pool "p1" include 3 "EngineStartRequested"
    And the events of pool "p1" include 0 "RestartStormDetected"

  Scenario: More restarts than the limit within the window open the breaker
    Given a running daemon on a manual clock
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 3 times, each failing
    Then pool "p1" reaches phase "circuit_open"
    And the events of pool "p1" end with "PreloadFailed, RestartStormDetected, CircuitOpened"
    And the last "RestartStormDetected" of pool "p1" has "restarts" 4
    And the last "RestartStormDetected" of pool "p1" has "window_ms" 10000
    And pool "p1" shows "breaker" "open"
    And pool "p1" shows "restart_count" 4
    And the events of pool "p1" include 4 "RestartScheduled"
    And a preload of pool "p1" is refused with 503 "CIRCUIT_OPEN"

  Scenario: A storm is reported with its cause and what to do about it
    Given a running daemon on a manual clock
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 3 times, each failing
    Then the last "RestartStormDetected" of pool "p1" has "classification" "crash_storm"
    And the last "RestartStormDetected" of pool "p1" has "hint" containing "read the engine log tail"
    And pool "p1" has a last error containing "restart storm (crash_storm): 4 restarts in 10000 ms"
    And pool "p1" has a last error containing "check flags and model file"

  Scenario: The window slides: each failure counts the restarts of the window_ms behind it
    # The first failure falls on a round boundary of the clock. Restarts at +0 (the first,
    # immediate), +9000 and +9800 fall in its first round of 10000 ms, +10600 and +11000 in the
    # next. At +10600 the window [+600, +10600] holds 3 restarts (+0 has slid out): no storm. At +11000 the
    # window [+1000, +11000] holds 4 (+9000 to +11000): a storm. A tumbling window would see
    # none: one that starts again at each round (+10000) holds 2 restarts at +11000, and so
    # does one that starts again at the first restart window_ms after its own start (+10600).
    Given the daemon's restarts are spaced 100 ms apart
    And a running daemon on a manual clock
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    Then the first failure of pool "p1" is on a multiple of 10000 ms
    When the restarts of pool "p1" are let through at "9000, 9800, 10600" ms after its first failure, each failing
    Then pool "p1" shows "phase" "backoff"
    And pool "p1" shows "restart_count" 4
    And the events of pool "p1" include 0 "RestartStormDetected"
    When the restarts of pool "p1" are let through at "11000" ms after its first failure, each failing
    Then pool "p1" reaches phase "circuit_open"
    And the events of pool "p1" end with "PreloadFailed, RestartStormDetected, CircuitOpened"
    And the last "RestartStormDetected" of pool "p1" has "restarts" 4
    And pool "p1" shows "restart_count" 5

  Scenario Outline: A storm is classified by its dominant cause
    Given a running daemon on a manual clock
    And pool "p1" is crash-looping with an engine-sim started with "<flags>"
    When the restarts of pool "p1" are let through 3 times, each failing
    Then pool "p1" reaches phase "circuit_open"
    And the last "RestartStormDetected" of pool "p1" has "classification" "<class>"
    And the last "RestartStormDetected" of pool "p1" has "hint" containing "<hint>"

    Examples:
      | flags                                   | class     | hint                         |
      | --cuda-error-after-ms 0                 | cuda_storm | CUDA errors                 |
      | --crash-after-ms 0 --crash-signal KILL  | oom_storm  | host OOM                    |
      | --crash-after-ms 0 --crash-signal ABRT  | crash_storm | engine crashes             |

  Scenario: An operator's reset ends the storm and starts the engine
    Given a running daemon on a manual clock
    And pool "p1" is crash-looping with a switchable engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 3 times, each failing
    Then pool "p1" reaches phase "circuit_open"
    When the next engines of pool "p1" are started with "--parallel 1"
    And the breaker of pool "p1" is reset
    Then the answer is 200
    And pool "p1" becomes ready
    And pool "p1" shows "breaker" "closed"
    And pool "p1" shows "restart_count" 5
    And the events of pool "p1" include, in this order, "RestartStormDetected, CircuitOpened, CircuitReset, EngineStartRequested, PoolReady"

  Scenario: A daemon restart does not reset a storm
    Given a running daemon on a manual clock
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 1 time, each failing
    And the daemon is restarted over the same journal
    Then pool "p1" shows "restart_count" 2
    When the restarts of pool "p1" are let through 2 times, each failing
    Then pool "p1" reaches phase "circuit_open"
    And the last "RestartStormDetected" of pool "p1" has "restarts" 4
