Feature: Preloading a pool over the API
  POST /v2/pools/{id}/preload takes the engine provisioner's PreparedEngine as
  {"prepared": {...}}, starts the engine and answers when the pool is ready (200) or when
  the start failed (500 with the reason, which is also the pool's last error); with
  ?wait=false it answers 202 at once. A request that cannot be right is refused (400, 413)
  before anything starts.

  (The daemon under test restarts a failed engine only after 60 s: each scenario sees the
  starts it asked for.)

  Scenario: A prepared engine becomes a ready pool
    Given a running daemon
    When pool "p1" is preloaded with an engine-sim started with "--parallel 3"
    Then the answer is 200
    And the answer has exactly the fields "pool_id, pid, handoff_path, engine_version, slots_total, ready_ms"
    And the answer's "pool_id" is "p1"
    And the answer shows the pid of the engine of pool "p1"
    And the answer's "handoff_path" is the handoff file "p1-r0.json"
    And the answer's "engine_version" is "b0-engine-sim"
    And the answer's "slots_total" is 3
    And the answer's "ready_ms" is a number
    And pool "p1" is live and ready

  Scenario: Every field of the prepared engine is taken
    Given a running daemon on a node whose NVIDIA driver lists 1 GPU
    When pool "p1" is preloaded with the body:
      """
      {"prepared": {
        "binary_path": "{engine-sim}",
        "flags": ["--port", "{port}", "-m", "/models/llama-3-8b.Q4_K_M.gguf", "--ctx-size", "8192"],
        "host": "127.0.0.1",
        "port": {port},
        "model_path": "/models/llama-3-8b.Q4_K_M.gguf",
        "engine_version": "llamacpp-b4242",
        "pool_id": "p1",
        "replica_id": "r1",
        "device_mask": "GPU0",
        "engine": "llamacpp",
        "env": {"LLAMA_ARG_THREADS": "4"},
        "health_path": "/v1/health",
        "slots_total": 2
      }}
      """
    Then the answer is 200
    And the answer's "handoff_path" is the handoff file "p1-r1.json"
    And the answer's "slots_total" is 2
    And pool "p1" is ready with 2 slots
    And the engine of pool "p1" was started with the prepared flags, in order
    And the engine of pool "p1" sees only PATH, HOME and LANG of the daemon's environment, and:
      | LLAMA_ARG_THREADS    | 4          |
      | CUDA_VISIBLE_DEVICES | 0          |
      | CUDA_DEVICE_ORDER    | PCI_BUS_ID |
    When the status of pool "p1" is requested
    Then the answer's "engine" is "llamacpp"
    And the answer's "device_mask" is "GPU0"
    And the answer's "model_ref" is "/models/llama-3-8b.Q4_K_M.gguf"

  Scenario: A binary that does not exist cannot be spawned
    Given a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "binary_path" set to "/nonexistent/llama-server"
    When pool "p1" is preloaded
    Then the answer is 500 with code "SPAWN_FAILED"
    And the answer's "error" mentions "/nonexistent/llama-server"
    And pool "p1" is not live and not ready
    And pool "p1" has a last error containing "/nonexistent/llama-server"

  Scenario: An engine that never becomes healthy times out
    Given a running daemon configured with:
      | health.preload_timeout_ms | 400 |
    When pool "p1" is preloaded with an engine-sim started with "--never-healthy"
    Then the answer is 500 with code "HEALTH_TIMEOUT"
    And the answer came no sooner than 400 ms
    And the events of pool "p1" record "PreloadFailed" with "failure" "health_timeout"
    And the engine of pool "p1" is gone

  Scenario: An engine that exits while loading fails the preload at once
    Given a running daemon configured with:
      | health.preload_timeout_ms | 10000 |
    When pool "p1" is preloaded with an engine-sim started with "--load-ms 8000 --crash-after-ms 200 --exit-code 3"
    Then the answer is 500 with code "ENGINE_EXITED"
    And the answer came within 3000 ms
    And the answer's "error" mentions "exit code 3"
    And the answer's "error" mentions "crashing after 200 ms"
    And the events of pool "p1" record "PreloadFailed" with "failure" "engine_exited"
    And pool "p1" has a last error containing "crashing after 200 ms"

  Scenario: Without waiting, the preload is accepted at once
    Given a running daemon
    When pool "p1" is preloaded without waiting with an engine-sim started with "--load-ms 1000"
    Then the answer is 202
    And the answer's "pool_id" is "p1"
    And the answer came within 500 ms
    And pool "p1" becomes live
    And pool "p1" is live and not ready
    And pool "p1" becomes ready

  Scenario: A body that is not JSON is refused
    Given a running daemon
    When pool "p1" is preloaded with the body:
      """
      prepared = llama-server
      """
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "malformed JSON"
    And pool "p1" is not in the registry

  Scenario: Truncated JSON is refused
    Given a running daemon
    When pool "p1" is preloaded with the body:
      """
      {"prepared": {"binary_path": "/usr/bin/llama-server",
      """
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "malformed JSON"
    And the answer's "error" mentions "EOF while parsing"
    And pool "p1" is not in the registry

  Scenario: A field of the wrong type is named
    Given a running daemon
    When pool "p1" is preloaded with the body:
      """
      {"prepared": {"binary_path": "/usr/bin/llama-server", "flags": [], "host": "127.0.0.1",
                    "port": "eighty", "model_path": "/models/m.gguf",
                    "engine_version": "b1", "pool_id": "p1", "replica_id": "r0"}}
      """
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "prepared.port"
    And pool "p1" is not in the registry

  Scenario: A missing field is named
    Given a running daemon
    When pool "p1" is preloaded with the body:
      """
      {"prepared": {"binary_path": "/usr/bin/llama-server", "port": 8080}}
      """
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "host"
    And pool "p1" is not in the registry

  Scenario: An unknown field is named
    Given a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "gpu_layers" set to 99
    When pool "p1" is preloaded
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "gpu_layers"
    And pool "p1" is not in the registry

  Scenario Outline: A pool id that cannot be one is refused
    Given a running daemon
    When an engine-sim preload of pool "p1" is posted to "/v2/pools/<id>/preload"
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "invalid pool id"
    And the daemon's health shows 0 pools

    Examples:
      | id                  |
      | -starts-with-a-dash |
      | .hidden             |
      | has%20a%20space     |
      | slash%2Finside      |
      | caf%C3%A9           |

  Scenario: A pool id longer than 64 characters is refused
    Given a running daemon
    When an engine-sim preload of pool "p1" is posted for a pool id of 65 characters
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "longer than 64 characters"

  Scenario: A body over 1 MiB is refused
    Given a running daemon
    When pool "p1" is preloaded with a body of 1100 KiB
    Then the answer is 413
    And the answer's "error" mentions "larger than 1048576 bytes"
    And pool "p1" is not in the registry

  Scenario: The pool id of the body must be the pool's
    Given a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "pool_id" set to "p2"
    When pool "p1" is preloaded
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "'p2' does not match the pool 'p1'"
    And pool "p1" is not in the registry
    And pool "p2" is not in the registry

  Scenario: Several pools are preloaded at once
    Given a running daemon
    When pools "p1, p2, p3" are preloaded at the same time with engine-sims started with "--load-ms 600 --parallel 2"
    Then every preload answered 200
    And the preloads took less than 1500 ms together
    And pool "p1" is ready with 2 slots
    And pool "p2" is ready with 2 slots
    And pool "p3" is ready with 2 slots
    And the daemon's health shows 3 pools

  @python3
  Scenario: Any HTTP server with a health route works as an engine
    Given a running daemon
    When pool "py" is preloaded with Python's http.server as its engine
    Then the answer is 200
    And pool "py" is live and ready
    And pool "py" has 0 active leases and 1 free slot
    And the engine of pool "py" runs the binary of its prepared engine
    And the engine of pool "py" leads its own process group
