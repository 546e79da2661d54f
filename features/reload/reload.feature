Feature: Reloading a pool onto another model (OC-CTRL-2003)
  A reload swaps the model a pool serves, atomically or not at all. The new model is staged
  first (it exists, it is readable, its sha256 digest matches when one is given); a model that
  is not there is refused with MODEL_NOT_FOUND and the running engine is not touched. Then the
  old engine is drained and stopped, and a new one starts on the new model (the model path and
  any flag equal to it replaced; pool id, device mask and replica kept). If the new engine
  fails, it is killed, the old model starts again, and the answer is RELOAD_FAILED with
  rolled_back true once it serves. A reload to the model already served changes nothing. The
  drain of a reload has its own deadline (drain_deadline_ms): leases still held then are cut
  short, as in any drain, and the reload goes on. This is the strategy drain_first; auto (the
  default) takes it too when no port of [reload] surge_ports is free, and the answer says which
  strategy was used and why.

  Background:
    Given a running daemon on a node whose NVIDIA driver lists 1 GPU
    And a model file "a.gguf" that loads
    And a model file "b.gguf" that loads
    And pool "p1" is ready serving the model "a.gguf"
    And the engine of pool "p1" is noted

  Scenario: The orchestrator's reload answers once the new model serves, from a new engine
    When pool "p1" is reloaded to the model "b.gguf"
    Then the answer is 200
    And the answer has exactly the fields "pool_id, engine_version, model_ref, duration_ms, noop, strategy, strategy_reason, url"
    And the answer's "noop" is false
    And the answer's "strategy" is "drain_first"
    And the answer's "pool_id" is "p1"
    And the answer's "engine_version" is "b0-engine-sim"
    And the answer's duration is the time from the pool "p1"'s reload request to its success, at least 200 ms
    And the answer came no sooner than 200 ms
    And pool "p1" is live and ready
    And the noted engine of pool "p1" is gone
    And pool "p1" serves the model "b.gguf"
    And pool "p1" shows "device_mask" "GPU0"
    And the events of pool "p1" include, in this order, "ReloadRequested, ModelStaged, DrainCompleted, ReloadSucceeded"

  Scenario: Without [reload] surge_ports, auto drains first and says why; surge is refused
    When pool "p1" is reloaded to the model "b.gguf" with the strategy "surge"
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "[reload] surge_ports"
    And the noted engine of pool "p1" is still running
    When pool "p1" is reloaded to the model "b.gguf" with the strategy "fast"
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "strategy"
    When pool "p1" is reloaded to the model "b.gguf" with the strategy "auto"
    Then the answer is 200
    And the answer's "strategy" is "drain_first"
    And the answer's "strategy_reason" mentions "[reload] surge_ports"
    And the events of pool "p1" include, in this order, "ReloadRequested, ReloadStrategyChosen, ModelStaged, DrainCompleted, ReloadSucceeded"

  Scenario: A reload to a file URI with the right digest
    When pool "p1" is reloaded to the model "b.gguf" as a file URI with its true digest
    Then the answer is 200
    And the answer's "noop" is false
    And pool "p1" serves the model "b.gguf" by its file URI
    And the noted engine of pool "p1" is gone

  Scenario: A missing model is refused and the engine is not touched
    When pool "p1" is reloaded to the model "missing.gguf"
    Then the answer is 422 with code "MODEL_NOT_FOUND"
    And the engine of pool "p1" is the noted one, still running
    And pool "p1" serves the model "a.gguf"

  Scenario: A wrong digest is refused and the engine is not touched
    When pool "p1" is reloaded to the model "b.gguf" with the digest "sha256:0000000000000000000000000000000000000000000000000000000000000000"
    Then the answer is 422 with code "MODEL_NOT_FOUND"
    And the answer's "error" mentions "digest mismatch"
    And the engine of pool "p1" is the noted one, still running

  Scenario: A reload to the model already served is a no-op
    When pool "p1" is reloaded to the model "a.gguf"
    Then the answer is 200
    And the answer's "noop" is true
    And the engine of pool "p1" is the noted one, still running

  Scenario: A new engine that cannot load its model is rolled back to the old model
    Given a model file "c.gguf" that fails to load
    When pool "p1" is reloaded to the model "c.gguf"
    Then the answer is 500 with code "RELOAD_FAILED"
    And the answer's "rolled_back" is true
    And pool "p1" serves the model "a.gguf"
    And pool "p1" is live and ready
    And pool "p1" shows "device_mask" "GPU0"
    And the noted engine of pool "p1" is gone
    And the events of pool "p1" include, in this order, "ReloadRequested, ModelStaged, ReloadFailed, ReloadRolledBack"

  Scenario: A reload whose drain reaches its deadline force-stops the old engine and goes on
    Given the orchestrator took lease "A" on pool "p1"
    When pool "p1" is reloaded to the model "b.gguf" with a drain deadline of 300 ms
    Then the answer is 200
    And pool "p1" serves the model "b.gguf"
    And the last "DrainCompleted" of pool "p1" has "outcome" "force_stopped"
    And the last "DrainCompleted" of pool "p1" has "leases_at_stop" 1
    When the orchestrator returns lease "A" on pool "p1"
    Then the answer is 404 with code "LEASE_NOT_FOUND"
