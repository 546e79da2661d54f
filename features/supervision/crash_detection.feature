Feature: Crash detection
  Every way an engine can fail is seen, and named in its EngineExited (or in the stop that
  the daemon made of it): a non-zero exit code, death by a signal, a SIGKILL that the daemon
  did not send (the host's OOM killer), a CUDA error, VRAM exhausted or a driver Xid in the
  engine's log, and an engine that stops answering its health probe. On a failure the pool
  is unready before anything else is published, its leases are dropped, and the crash is
  counted. An engine that exits with code 0 by itself ended gracefully and is not restarted.

  (These daemons run on a manual clock that the scenarios do not move: a first failure is
  restarted at once, and a second one only when its backoff has passed on that clock, so an
  engine that fails each time it starts is seen twice, then the pool settles in backoff.)

  Scenario: An engine that exits with a non-zero code has crashed
    Given a running daemon on a manual clock
    And pool "p1" is ready with an engine-sim started with "--crash-after-ms 400 --exit-code 7"
    When the engine of pool "p1" exits by itself
    Then pool "p1" settles in backoff
    And the last "EngineExited" of pool "p1" has "reason" "crash"
    And the last "EngineExited" of pool "p1" has "exit_code" 7
    And the last "EngineExited" of pool "p1" has "signal" null
    And the events of pool "p1" end with "EngineExited, RestartScheduled"
    And pool "p1" is not live and not ready
    And restart 1 of pool "p1" was scheduled about 0 ms after a "crash" failure
    And pool "p1" shows "crash_count" 2

  Scenario: A crash makes the pool unready and drops its leases before anything else
    Given a running daemon on a manual clock
    And pool "p1" is ready with an engine-sim started with "--crash-after-ms 400 --exit-code 7 --parallel 2"
    And the orchestrator took lease "a" on pool "p1"
    When the engine of pool "p1" exits by itself
    Then pool "p1" was not ready any more 1000 ms after its engine exited
    And pool "p1" was ready with 1 lease before its "EngineExited" and unready with none right after it
    And pool "p1" has 0 active leases and 0 free slots

  Scenario: An engine killed by SIGSEGV died by a signal, and the signal is recorded
    Given a running daemon on a manual clock
    And pool "p1" is ready with an engine-sim started with "--crash-after-ms 400 --crash-signal SEGV"
    When the engine of pool "p1" exits by itself
    Then pool "p1" settles in backoff
    And the last "EngineExited" of pool "p1" has "reason" "signal"
    And the last "EngineExited" of pool "p1" has "signal" 11
    And the last "EngineExited" of pool "p1" has "exit_code" null
    And pool "p1" has a last error containing "killed by signal 11"

  Scenario: An engine that aborts from outside the daemon died by a signal
    Given a running daemon on a manual clock
    And a ready pool "p1" with 1 slot
    When the engine of pool "p1" is killed by SIGABRT from outside the daemon
    Then pool "p1" is restarted at once
    And the last "EngineExited" of pool "p1" has "reason" "signal"
    And the last "EngineExited" of pool "p1" has "signal" 6

  Scenario: A SIGKILL the daemon did not send is an OOM kill
    Given a running daemon on a manual clock
    And pool "p1" is ready with an engine-sim started with "--crash-after-ms 400 --crash-signal KILL"
    When the engine of pool "p1" exits by itself
    Then pool "p1" settles in backoff
    And the last "EngineExited" of pool "p1" has "reason" "oom_killed"
    And the last "EngineExited" of pool "p1" has "signal" 9
    And the last "RestartScheduled" of pool "p1" has "reason" "oom_killed"

  Scenario: The OOM killer's SIGKILL from outside is an OOM kill too
    Given a running daemon on a manual clock
    And a ready pool "p1" with 1 slot
    When the engine of pool "p1" is killed by SIGKILL from outside the daemon
    Then pool "p1" is restarted at once
    And the last "EngineExited" of pool "p1" has "reason" "oom_killed"

  Scenario: An engine that prints a CUDA error and exits failed with a CUDA error
    Given a running daemon on a manual clock
    And pool "p1" is ready with an engine-sim started with "--cuda-error-after-ms 400"
    When the engine of pool "p1" exits by itself
    Then pool "p1" settles in backoff
    And the last "RestartScheduled" of pool "p1" has "reason" "cuda_error"
    And pool "p1" has a last error containing "CUDA error: an illegal memory access was encountered"
    And pool "p1" shows "crash_count" 2

  Scenario: A KV cache that does not fit in VRAM is a VRAM OOM, not a host OOM
    Given a running daemon on a manual clock
    And pool "p1" is crash-looping with an engine-sim started with these arguments:
      """
      --cuda-error-after-ms
      0
      --cuda-error-message
      ggml_backend_cuda_buffer_type_alloc_buffer: allocating 97656.25 MiB on device 0: cudaMalloc failed: out of memory\nfailed to allocate buffer for kv cache\nexiting due to model loading error
      """
    Then pool "p1" settles in backoff
    And the last "PreloadFailed" of pool "p1" has "cause" "vram_oom"
    And the last "RestartScheduled" of pool "p1" has "reason" "vram_oom"
    And pool "p1" has a last error containing "cudaMalloc failed: out of memory"

  Scenario: An Xid in the log of a running engine stops it as a driver error
    Given a running daemon on a manual clock
    And pool "p1" is ready with an engine-sim started with these arguments:
      """
      --log-line-after-ms
      400
      --log-line
      NVRM: Xid (PCI:0000:01:00): 79, pid=1234, GPU has fallen off the bus.
      """
    Then pool "p1" settles in backoff
    And the engine of pool "p1" is gone
    And the last "EngineStopRequested" of pool "p1" has "reason.failure.reason" "driver_error"
    And the last "RestartScheduled" of pool "p1" has "reason" "driver_error"
    And pool "p1" has a last error containing "Xid"
    And pool "p1" shows "crash_count" 2

  Scenario: An engine that stops answering its probes is stopped as hung
    Given a running daemon on a manual clock, configured with:
      | health.ready_interval_ms | 50 |
      | stop.grace_ms            | 300 |
    And pool "p1" is ready with an engine-sim started with "--hang-after-ms 500"
    When the engine of pool "p1" is found hung
    Then pool "p1" settles in backoff
    And the events of pool "p1" include, in this order, "HealthCheckFailed, HealthCheckFailed, HealthCheckFailed, EngineStopRequested, EngineStopped, RestartScheduled"
    And the last "HealthCheckFailed" of pool "p1" has "consecutive" 3
    And the last "RestartScheduled" of pool "p1" has "reason" "health_timeout"
    And the engine of pool "p1" is gone

  Scenario: An engine that exits with code 0 by itself ended gracefully and stays down
    Given a running daemon on a manual clock
    And pool "p1" is ready with an engine-sim started with "--crash-after-ms 400 --exit-code 0"
    When the engine of pool "p1" exits by itself
    Then pool "p1" reaches phase "stopped"
    And the last "EngineExited" of pool "p1" has "reason" "graceful"
    And the events of pool "p1" include no "RestartScheduled"
    And pool "p1" shows "crash_count" 0
    And pool "p1" has a last error containing "without a stop request"

  Scenario: The crash context is kept: the engine's last words are in the last error
    Given a running daemon on a manual clock
    And pool "p1" is ready with an engine-sim started with "--crash-after-ms 400 --exit-code 3"
    When the engine of pool "p1" exits by itself
    Then pool "p1" settles in backoff
    And pool "p1" has a last error containing "exit code 3"
    And pool "p1" has a last error containing "crashing after 400 ms: exit code 3"
    And the last "EngineExited" of pool "p1" has "detail" containing "crashing after 400 ms"

  Scenario: Every failure is counted
    Given a running daemon on a manual clock, configured with:
      | backoff.initial_ms | 1000 |
    And pool "p1" is crash-looping with an engine-sim started with "--crash-after-ms 0 --exit-code 3"
    When the restarts of pool "p1" are let through 1 time, each failing
    Then pool "p1" shows "crash_count" 3
    And pool "p1" shows "restart_count" 2
    And the events of pool "p1" include 3 "EngineSpawned"
