Feature: A pool's health for the orchestrator
  GET /v2/pools/{id}/health answers the orchestrator's questions (OC-CTRL-2001): is the
  engine live, is the pool ready, is it draining, what went wrong last, how many slots are
  free. Readiness comes only from a passed health check (OC-POOL-3001); the last error
  says why a pool is not ready (OC-POOL-3003) until a later success clears it.

  Background:
    Given a running daemon

  Scenario: The health view has exactly the orchestrator's fields
    Given a ready pool "p1" with 2 slots
    When the health of pool "p1" is requested
    Then the answer is 200
    And the answer has exactly the fields "live, ready, draining, last_error, slots_free"

  Scenario: A pool whose engine is still loading is live but not ready
    Given pool "p1" is loading with an engine-sim started with "--load-ms 5000"
    When the health of pool "p1" is requested
    Then the answer is 200
    And the answer's "live" is true
    And the answer's "ready" is false
    And the answer's "draining" is false
    And the answer's "last_error" is null
    And the answer's "slots_free" is 0

  Scenario: A ready pool is live and ready, with its free slots
    Given a ready pool "p1" with 4 slots
    And the orchestrator took lease "A" on pool "p1"
    When the health of pool "p1" is requested
    Then the answer's "live" is true
    And the answer's "ready" is true
    And the answer's "draining" is false
    And the answer's "last_error" is null
    And the answer's "slots_free" is 3

  Scenario: A draining pool says so
    Given a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And pool "p1" is asked to drain within 30000 ms
    When the health of pool "p1" is requested
    Then the answer's "draining" is true
    And the answer's "ready" is true
    And the answer's "slots_free" is 1

  Scenario: A failed preload leaves the pool unready with the reason
    Given pool "p1" failed to preload because its engine exited while loading
    When the health of pool "p1" is requested
    Then the answer is 200
    And the answer's "live" is false
    And the answer's "ready" is false
    And the answer's "slots_free" is 0
    And the answer's "last_error" mentions "exit code 3"

  Scenario: A later success clears the last error
    Given pool "p1" failed to preload because its engine exited while loading
    When pool "p1" is preloaded again with an engine-sim
    Then the answer is 200
    When the health of pool "p1" is requested
    Then the answer's "live" is true
    And the answer's "ready" is true
    And the answer's "last_error" is null

  Scenario: An unknown pool has no health
    When the health of pool "ghost" is requested
    Then the answer is 404 with code "POOL_NOT_FOUND"
