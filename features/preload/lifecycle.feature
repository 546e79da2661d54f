Feature: The preload lifecycle of an engine
  A preload spawns the prepared binary with its flags, appends its output to
  <runtime>/logs/<pool>.log, writes <runtime>/pids/<pool>.pid before the health wait, polls
  the health route, and only once it answers 200 writes the handoff file
  <runtime>/engines/<pool>-<replica>.json and makes the pool ready (OC-POOL-3001). A failed
  start kills the engine, removes its pid file, records the cause as the pool's last error
  and leaves the pool unready (OC-POOL-3002, OC-POOL-3003).

  (The daemon under test restarts a failed engine only after 60 s: each scenario sees the
  starts it asked for.)

  Scenario: The engine runs the prepared binary with every flag, in order
    Given a running daemon
    When pool "p1" is preloaded with an engine-sim started with "--ctx-size 8192 --build-info b77 -np 3 -- --ignored-by-the-engine"
    Then the answer is 200
    And the engine of pool "p1" runs the binary of its prepared engine
    And the engine of pool "p1" was started with the prepared flags, in order
    And pool "p1" is ready with 3 slots

  Scenario: The engine's output goes to its log file
    Given a running daemon
    And a ready pool "p1" with 1 slot
    Then the log file of pool "p1" contains "engine-sim: build: b0-engine-sim"
    And the log file of pool "p1" contains "engine-sim: listening on http://127.0.0.1:"
    And the log file of pool "p1" holds the output of 1 engine starts

  Scenario: A second start appends to the same log file
    Given a running daemon
    And a ready pool "p1" with 1 slot
    And pool "p1" was stopped
    When pool "p1" is preloaded again with an engine-sim
    Then the answer is 200
    And the log file of pool "p1" holds the output of 2 engine starts
    And the log file of pool "p1" contains "received SIGTERM, shutting down"

  Scenario: The pid file is written before the engine is healthy, the handoff file after
    Given a running daemon
    When pool "p1" is preloaded without waiting with an engine-sim started with "--load-ms 1500"
    Then the answer is 202
    And pool "p1" becomes live
    And pool "p1" is live and not ready
    And the pid file of pool "p1" holds the pid of its engine as plain text
    And pool "p1" has no handoff file
    And pool "p1" becomes ready
    And the pid file of pool "p1" holds the pid of its engine as plain text
    And the events of pool "p1" include, in this order, "PreloadRequested, EngineSpawned, HealthCheckPassed, PoolReady"

  Scenario: A pool is not ready while its engine is loading (OC-POOL-3001)
    Given a running daemon
    When pool "p1" is preloaded without waiting with an engine-sim started with "--load-ms 1000"
    Then pool "p1" becomes live
    And pool "p1" is not ready while its engine answers 503 "Loading model"
    And pool "p1" becomes ready
    And the engine of pool "p1" answers 200 on its health route

  Scenario: The handoff file describes the ready engine
    Given a running daemon on a node whose NVIDIA driver lists 2 GPUs
    And pool "p1" is prepared as an engine-sim started with "--parallel 3"
    And the prepared engine of pool "p1" has "replica_id" set to "r7"
    And the prepared engine of pool "p1" has "device_mask" set to "GPU0,GPU1"
    When pool "p1" is preloaded
    Then the answer is 200
    And the answer's "handoff_path" is the handoff file "p1-r7.json"
    And the handoff file "p1-r7.json" says:
      | engine         | "engine-sim"      |
      | engine_version | "b0-engine-sim"   |
      | pool_id        | "p1"              |
      | replica_id     | "r7"              |
      | model.path     | "/models/p1.gguf" |
      | device_mask    | "GPU0,GPU1"       |
      | slots_total    | 3                 |
    And the handoff file "p1-r7.json" has the url, flags and pid of the engine of pool "p1"

  Scenario Outline: Where the slot count comes from
    Given a running daemon
    And pool "p1" is prepared as an engine-sim started with "<flags>"
    And the prepared engine of pool "p1" has "slots_total" set to <prepared>
    When pool "p1" is preloaded
    Then the answer is 200
    And pool "p1" is ready with <slots> slots

    Examples: the prepared engine first, then /props total_slots, then --parallel, then 1
      | flags                                                   | prepared | slots |
      | --parallel 6                                            | 2        | 2     |
      | --parallel 6                                            | null     | 6     |
      | --parallel 5 --no-slots-in-props                        | null     | 5     |
      | --parallel 5 --props-status 404                         | null     | 5     |
      | --no-slots-in-props                                     | null     | 1     |

  Scenario: A failed start kills the engine and cleans up (OC-POOL-3002)
    Given a running daemon configured with:
      | health.preload_timeout_ms | 500 |
    When pool "p1" is preloaded with an engine-sim started with "--never-healthy"
    Then the answer is 500 with code "HEALTH_TIMEOUT"
    And the engine of pool "p1" is gone
    And the pid file of pool "p1" is gone
    And pool "p1" has no handoff file
    And the events of pool "p1" record "PreloadFailed" with "failure" "health_timeout"
    And pool "p1" has a last error containing "500 ms"
    And the events of pool "p1" include, in this order, "PreloadRequested, EngineSpawned, PreloadFailed, EngineStopped"
    And the events of pool "p1" include no "PoolReady"

  Scenario: An engine that exits while loading leaves its log tail as the last error (OC-POOL-3003)
    Given a running daemon
    When pool "p1" is preloaded with an engine-sim started with "--load-ms 8000 --crash-after-ms 100 --exit-code 3"
    Then the answer is 500 with code "ENGINE_EXITED"
    And the engine of pool "p1" is gone
    And pool "p1" has no handoff file
    And the events of pool "p1" record "PreloadFailed" with "failure" "engine_exited"
    And pool "p1" has a last error containing "exit code 3"
    And pool "p1" has a last error containing "engine-sim: crashing after 100 ms"

  Scenario: A later successful preload clears the last error
    Given a running daemon
    And pool "p1" failed to preload because its engine exited while loading
    When pool "p1" is preloaded again with an engine-sim
    Then the answer is 200
    And pool "p1" is live and ready
    And pool "p1" has no last error
    And the pid file of pool "p1" holds the pid of its engine as plain text
