Feature: A pool's status over the API
  GET /v2/pools/{id} (and the same at /v2/pools/{id}/status) serves one pool of the registry
  as PoolStatus; GET /v2/pools serves them all, sorted by id. An unknown pool is
  POOL_NOT_FOUND. The orchestrator client of the original system calls GET and POST
  /pools/{id}/status and POST /pools/{id}/preload: these answer as their /v2 forms.

  Background:
    Given a running daemon

  Scenario: The status of a ready pool
    Given a ready pool "p1" with 2 slots
    When the status of pool "p1" is requested
    Then the answer is 200
    And the answer's "pool_id" is "p1"
    And the answer's "phase" is "ready"
    And the answer's "live" is true
    And the answer's "ready" is true
    And the answer's "draining" is false
    And the answer's "slots_total" is 2
    And the answer's "slots_free" is 2
    And the answer's "active_leases" is 0
    And the answer's "last_error" is null
    And the answer's "breaker" is "closed"
    And the answer's "engine" is "engine-sim"
    And the answer's "model_ref" is "/models/p1.gguf"
    And the answer's "last_heartbeat_ms" is a number
    And the answer shows the pid of the engine of pool "p1"

  Scenario: /status is the pool itself
    Given a ready pool "p1" with 2 slots
    When a client sends GET "/v2/pools/p1/status"
    Then the answer is 200
    And the answer equals the answer to GET "/v2/pools/p1"

  Scenario: An unknown pool is not found
    When the status of pool "ghost" is requested
    Then the answer is 404 with code "POOL_NOT_FOUND"
    And the answer's "error" mentions "ghost"

  Scenario: The status follows the registry
    Given a ready pool "p1" with 2 slots
    When the orchestrator takes lease "A" on pool "p1"
    And the status of pool "p1" is requested
    Then the answer's "active_leases" is 1
    And the answer's "slots_free" is 1

  Scenario: The engine's version is known once the pool is ready
    When pool "p1" is preloaded with an engine-sim started with "--build-info b4242-test"
    Then the answer is 200
    And the answer's "engine_version" is "b4242-test"
    And pool "p1" shows the engine version "b4242-test"

  Scenario: The list of pools is sorted by id, byte by byte
    Given a ready pool "b-pool" with 1 slot
    And a ready pool "a.pool" with 1 slot
    And a ready pool "C_pool" with 1 slot
    When the list of pools is requested
    Then the answer is 200
    And the answer lists the pools "C_pool, a.pool, b-pool"

  Scenario: A daemon without pools lists none
    When the list of pools is requested
    Then the answer is 200
    And the answer lists no pool

  Scenario Outline: The original client's status routes answer as /v2
    Given a ready pool "p1" with 2 slots
    When a client sends <method> "/pools/p1/status"
    Then the answer is 200
    And the answer equals the answer to GET "/v2/pools/p1"

    Examples:
      | method |
      | GET    |
      | POST   |

  Scenario: The original client's status route knows no unknown pool either
    When a client sends GET "/pools/ghost/status"
    Then the answer is 404 with code "POOL_NOT_FOUND"

  Scenario: The original client's preload route preloads
    Given pool "p2" is prepared as an engine-sim started with "--parallel 3"
    When pool "p2" is preloaded through "/pools/p2/preload"
    Then the answer is 200
    And the answer's "pool_id" is "p2"
    And the answer shows the pid of the engine of pool "p2"
    And pool "p2" is ready with 3 slots
