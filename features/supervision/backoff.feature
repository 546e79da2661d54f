Feature: Restart backoff
  A one-off failure is restarted at once (a fresh pool, or one that ran stably for the reset
  period): RestartScheduled with delay_ms 0. From the second failure within the reset window
  the restart waits a delay that grows with each attempt: initial_ms, then times the factor
  each time, capped at max_ms and never below min_ms, with a random jitter of up to ±jitter so
  that pools that fail together do not restart together. GPU faults wait longer (a per-reason
  multiplier). The delay chosen is recorded in RestartScheduled, with the time before which no
  restart happens (not_before_ms = the failure's time + the delay), and the pool shows it as
  backoff_ms. After a stable run the attempt count starts over. Meanwhile a lease is refused
  with POOL_UNREADY (503) whose Retry-After gives the whole seconds left until the restart,
  rounded up.

  A failed start (an engine that dies while loading) is a failure like a crash. The daemons
  here run on a manual clock: a delayed restart happens only when a step moves the clock to its
  time, and the crash-looping engines fail again as soon as they start (so a crash-looping pool
  has failed twice, its first restart immediate, when it first waits out a delay).

  Scenario: A one-off crash is restarted at once
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms | 1000 |
    And pool "p1" is ready with an engine-sim started with "--parallel 1"
    When the engine of pool "p1" is killed by SIGABRT from outside the daemon
    Then engine 2 of pool "p1" is spawned at its restart time
    And restart 1 of pool "p1" was scheduled about 0 ms after a "signal" failure
    And pool "p1" becomes ready
    And the last "EngineStartRequested" of pool "p1" has "purpose" "restart"

  Scenario: A second failure waits the initial delay, and not a moment less
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms | 1000 |
      | backoff.jitter     | 0.1  |
    And pool "p1" is crash-looping with a switchable engine-sim started with "--crash-after-ms 0 --exit-code 3"
    Then restart 1 of pool "p1" was scheduled about 0 ms after a "crash" failure
    And restart 2 of pool "p1" was scheduled about 1000 ms after a "crash" failure
    And pool "p1" waits out the restart delay it shows
    When the next engines of pool "p1" are started with "--parallel 1"
    And the clock reaches 1 ms before the restart time of pool "p1"
    Then pool "p1" stays in phase "backoff" with 2 engines spawned
    When the clock reaches the restart time of pool "p1"
    Then engine 3 of pool "p1" is spawned at its restart time
    And pool "p1" becomes ready
    And the last "EngineStartRequested" of pool "p1" has "purpose" "restart"

  Scenario: Each further restart waits twice as long
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms | 1000 |
      | backoff.factor     | 2.0  |
      | backoff.max_ms     | 60000 |
      | backoff.jitter     | 0.1  |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When pool "p1" fails 4 times in all, each restart let through at its time
    Then the restart delays of pool "p1" were about "0, 1000, 2000, 4000" ms
    And no restart of pool "p1" started before its time

  Scenario: The delay stops growing at max_ms
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms        | 1000 |
      | backoff.max_ms            | 5000 |
      | backoff.jitter            | 0.1  |
      | breaker.failure_threshold | 20   |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When pool "p1" fails 7 times in all, each restart let through at its time
    Then the restart delays of pool "p1" were about "0, 1000, 2000, 4000, 5000, 5000, 5000" ms
    And pool "p1" waits out the restart delay it shows

  # The breaker opens at the fourth failure, so that moving the clock for one pool never
  # lets a further restart of the other through (both share the daemon's clock).
  Scenario: Jitter spreads the restarts of pools that fail together
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms        | 1000 |
      | backoff.jitter            | 0.5  |
      | breaker.failure_threshold | 4    |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    And pool "p2" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When pool "p1" fails 4 times in all, each restart let through at its time
    And pool "p2" fails 4 times in all, each restart let through at its time
    Then the restart delays of pool "p1" were about "0, 1000, 2000" ms
    And the restart delays of pool "p2" were about "0, 1000, 2000" ms
    And pools "p1" and "p2" chose different restart delays
    And the restart delays of pool "p1" are not all exactly nominal

  Scenario: A stable run starts the attempts over
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms     | 1000   |
      | backoff.jitter         | 0      |
      | backoff.reset_after_ms | 300000 |
    And pool "p1" is crash-looping with a switchable engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 2 times, each failing
    Then the last "RestartScheduled" of pool "p1" has "attempt" 4
    And the last "RestartScheduled" of pool "p1" has "delay_ms" 4000
    When the next engines of pool "p1" are started with "--parallel 1"
    And the restart of pool "p1" is let through
    Then pool "p1" becomes ready
    When the clock reaches the backoff-reset time of pool "p1"
    Then the last "BackoffReset" of pool "p1" has "previous_attempt" 4
    When the engine of pool "p1" is killed by SIGABRT from outside the daemon
    Then engine 6 of pool "p1" is spawned at its restart time
    And the last "RestartScheduled" of pool "p1" has "attempt" 1
    And the last "RestartScheduled" of pool "p1" has "delay_ms" 0
    And pool "p1" becomes ready

  Scenario: A run shorter than the stable period does not start the attempts over
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms     | 1000   |
      | backoff.jitter         | 0      |
      | backoff.reset_after_ms | 300000 |
    And pool "p1" is crash-looping with a switchable engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the next engines of pool "p1" are started with "--parallel 1"
    And the restart of pool "p1" is let through
    Then pool "p1" becomes ready
    When 299 seconds pass
    And the engine of pool "p1" is killed by SIGABRT from outside the daemon
    Then pool "p1" reaches phase "backoff"
    And the events of pool "p1" include no "BackoffReset"
    And the last "RestartScheduled" of pool "p1" has "attempt" 3
    And the last "RestartScheduled" of pool "p1" has "delay_ms" 2000

  # min_ms bounds the backoff delays; the first restart, immediate, is not a backoff.
  Scenario: No backoff delay is shorter than min_ms
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms        | 100 |
      | backoff.min_ms            | 500 |
      | backoff.jitter            | 0   |
      | breaker.failure_threshold | 10  |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When pool "p1" fails 5 times in all, each restart let through at its time
    Then the restart delays of pool "p1" were about "0, 500, 500, 500, 800" ms
    And the last "RestartScheduled" of pool "p1" has "delay_ms" 800
    And the events of pool "p1" include 5 "RestartScheduled"

  Scenario: GPU faults wait longer than crashes
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms                 | 1000 |
      | backoff.jitter                     | 0    |
      | backoff.reason_multiplier.cuda_error | 2.0 |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    And pool "p2" is crash-looping with an engine-sim started with "--cuda-error-after-ms 0"
    When pool "p1" fails 3 times in all, each restart let through at its time
    And pool "p2" fails 3 times in all, each restart let through at its time
    Then the restart delays of pool "p1" were about "0, 1000, 2000" ms
    And the restart delays of pool "p2" were about "0, 2000, 4000" ms
    And the last "RestartScheduled" of pool "p2" has "reason" "cuda_error"

  Scenario: Each delay decision is recorded with its reason and shown by the pool
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms | 1000 |
      | backoff.jitter     | 0.1  |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --crash-signal SEGV"
    When the restarts of pool "p1" are let through 1 time, each failing
    Then restart 3 of pool "p1" was scheduled about 2000 ms after a "signal" failure
    And pool "p1" waits out the restart delay it shows
    And pool "p1" shows "phase" "backoff"
    And pool "p1" shows "ready" false

  # The pool has failed twice, so that its restart is a backed-off one whatever the delay of
  # a first restart.
  Scenario: A pool in backoff says when its restart is due (Retry-After)
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms | 10000 |
      | backoff.jitter     | 0     |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 1 time, each failing
    Then pool "p1" reaches phase "backoff"
    When the orchestrator takes lease "A" on pool "p1"
    Then the answer is 503 with code "POOL_UNREADY"
    And the answer's "error" mentions "its restart is due in"
    And the answer says to retry after the seconds left until the restart of pool "p1"
    When the clock reaches 1500 ms before the restart time of pool "p1"
    And the orchestrator takes lease "A" on pool "p1"
    Then the answer is 503 with code "POOL_UNREADY"
    And the answer says to retry after 2 seconds
    When the clock reaches 1 ms before the restart time of pool "p1"
    And the orchestrator takes lease "A" on pool "p1"
    Then the answer is 503 with code "POOL_UNREADY"
    And the answer says to retry after 1 second
    And pool "p1" shows "phase" "backoff"
