Feature: Reloading without a gap (surge)
  A reload with the strategy surge starts the new engine beside the old one, on a port of
  `[reload] surge_ports` (the flag equal to the old port replaced, as the model path is). Once
  the new engine answers healthy and is proven, the pool switches to it in one journal event:
  new leases go to it, the status and the handoff file carry its address, and the old engine
  finishes the leases it held, then stops (or at the drain deadline). If the new engine fails,
  it is killed and the old one, which never stopped, serves on: the answer is RELOAD_FAILED
  with rolled_back true and the pool never left ready. `auto`, the default, surges when the
  new engine fits beside the old one and a surge port is free, and drains first otherwise; the
  answer says which and why.

  Background:
    Given a running daemon with a surge port on a node whose NVIDIA driver lists 1 GPU
    And a model file "a.gguf" that loads
    And a model file "b.gguf" that loads
    And pool "p1" is ready serving the model "a.gguf"
    And the engine of pool "p1" is noted

  Scenario: A surge switches to the new engine while the old one finishes its lease
    Given the orchestrator took lease "A" on pool "p1"
    When pool "p1" is reloaded to the model "b.gguf" with the strategy "surge"
    Then the answer is 200
    And the answer's "strategy" is "surge"
    And pool "p1" serves the model "b.gguf"
    And pool "p1" serves at the surge port
    And pool "p1" stayed ready from its last reload request on
    And the noted engine of pool "p1" is still running
    When the orchestrator takes lease "B" on pool "p1"
    Then the answer is 201
    When the orchestrator returns lease "A" on pool "p1"
    Then the answer is 200
    And the noted engine of pool "p1" is gone
    And the events of pool "p1" record "SecondEngineEnded" with "leases_dropped" 0
    And the events of pool "p1" include, in this order, "ReloadRequested, ReloadStrategyChosen, ModelStaged, SurgeStartRequested, SurgeSpawned, SurgeHealthPassed, SurgeSwitched, ReloadSucceeded, SecondStopRequested, SecondEngineEnded"

  Scenario: auto surges when the new engine fits beside the old one, and says why
    When pool "p1" is reloaded to the model "b.gguf"
    Then the answer is 200
    And the answer's "strategy" is "surge"
    And the answer's "strategy_reason" mentions "fits beside the old one"
    And pool "p1" serves the model "b.gguf"
    And pool "p1" stayed ready from its last reload request on
    And the noted engine of pool "p1" is gone

  Scenario: A new engine that cannot load is killed and the old one serves on
    Given a model file "c.gguf" that fails to load
    When pool "p1" is reloaded to the model "c.gguf" with the strategy "surge"
    Then the answer is 500 with code "RELOAD_FAILED"
    And the answer's "rolled_back" is true
    And the engine of pool "p1" is the noted one, still running
    And pool "p1" serves the model "a.gguf"
    And pool "p1" stayed ready from its last reload request on
    And the events of pool "p1" include, in this order, "SurgeStartRequested, SurgeSpawned, SecondEngineEnded, ReloadFailed"

  Scenario: drain_first, asked for, stops the old engine before the new one starts
    When pool "p1" is reloaded to the model "b.gguf" with the strategy "drain_first"
    Then the answer is 200
    And the answer's "strategy" is "drain_first"
    And pool "p1" serves the model "b.gguf"
    And the noted engine of pool "p1" is gone
    And the events of pool "p1" include, in this order, "ReloadRequested, ReloadStrategyChosen, ModelStaged, DrainCompleted, ReloadSucceeded"
