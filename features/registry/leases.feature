Feature: Leases on a pool's slots
  The orchestrator takes a ready pool's request slots as leases: POST /v2/pools/{id}/leases
  answers 201 with a lease id the daemon chose, DELETE /v2/pools/{id}/leases/{lease_id} gives
  it back. Counts never go negative, an unknown pool lends nothing, and every pool counts on
  its own. (Scenarios call leases by an alias, "A"; the daemon's lease ids stand behind it.)

  Background:
    Given a running daemon
    And a ready pool "p1" with 2 slots

  Scenario: Taking a lease uses one slot
    When the orchestrator takes lease "A" on pool "p1"
    Then the answer is 201
    And the answer names a new lease
    And the answer's "active_leases" is 1
    And the answer's "slots_free" is 1
    And pool "p1" has 1 active lease and 1 free slot

  Scenario: Taking several leases
    When the orchestrator takes lease "A" on pool "p1"
    And the orchestrator takes lease "B" on pool "p1"
    Then the answer is 201
    And the answer's "active_leases" is 2
    And the answer's "slots_free" is 0
    And leases "A" and "B" of pool "p1" have different ids
    And pool "p1" has 2 active leases and 0 free slots

  Scenario: No lease beyond the slots
    Given the orchestrator took lease "A" on pool "p1"
    And the orchestrator took lease "B" on pool "p1"
    When the orchestrator takes lease "C" on pool "p1"
    Then the answer is 429 with code "SLOTS_EXHAUSTED"
    And pool "p1" has 2 active leases and 0 free slots

  Scenario: Returning a lease frees its slot
    Given the orchestrator took lease "A" on pool "p1"
    When the orchestrator returns lease "A" on pool "p1"
    Then the answer is 200
    And the answer's "active_leases" is 0
    And the answer's "slots_free" is 2
    And pool "p1" has 0 active leases and 2 free slots

  Scenario: A freed slot can be taken again
    Given the orchestrator took lease "A" on pool "p1"
    And the orchestrator took lease "B" on pool "p1"
    And the orchestrator returned lease "A" on pool "p1"
    When the orchestrator takes lease "C" on pool "p1"
    Then the answer is 201
    And pool "p1" has 2 active leases and 0 free slots

  Scenario: A lease that was never granted cannot be returned
    When the orchestrator returns a lease that was never granted on pool "p1"
    Then the answer is 404 with code "LEASE_NOT_FOUND"
    And pool "p1" has 0 active leases and 2 free slots

  Scenario: A lease is returned only once
    Given the orchestrator took lease "A" on pool "p1"
    And the orchestrator returned lease "A" on pool "p1"
    When the orchestrator returns lease "A" on pool "p1"
    Then the answer is 404 with code "LEASE_NOT_FOUND"
    And pool "p1" has 0 active leases and 2 free slots

  Scenario: An unknown pool lends nothing
    When the orchestrator takes lease "A" on pool "nope"
    Then the answer is 404 with code "POOL_NOT_FOUND"
    When the orchestrator returns a lease that was never granted on pool "nope"
    Then the answer is 404 with code "POOL_NOT_FOUND"
    And pool "nope" is not in the registry

  Scenario: Pools count their leases independently
    Given a ready pool "p2" with 4 slots
    When the orchestrator takes lease "A" on pool "p1"
    And the orchestrator takes lease "B" on pool "p2"
    And the orchestrator takes lease "C" on pool "p2"
    Then pool "p1" has 1 active lease and 1 free slot
    And pool "p2" has 2 active leases and 2 free slots

  Scenario: A pool that is not ready lends no slots
    Given pool "p3" is loading with an engine-sim started with "--load-ms 5000"
    When the orchestrator takes lease "A" on pool "p3"
    Then the answer is 503 with code "POOL_UNREADY"
    And the answer has no Retry-After
    And pool "p3" has 0 active leases and 0 free slots

  Scenario: A draining pool lends no more slots
    Given the orchestrator took lease "A" on pool "p1"
    And pool "p1" is asked to drain within 30000 ms
    When the orchestrator takes lease "B" on pool "p1"
    Then the answer is 409 with code "POOL_DRAINING"
    And pool "p1" has 1 active lease and 1 free slot
