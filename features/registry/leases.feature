Feature: Leases on a pool's slots
  The registry lends a ready pool's request slots to the orchestrator as leases. Counts never go
  negative, an unknown pool has no leases, and every pool counts on its own.
  (Driven through the pure core: decide, the journal's facts, evolve.)

  Background:
    Given a ready pool "p1" with 2 slots

  Scenario: Taking a lease uses one slot
    When the orchestrator takes lease "l1" on pool "p1"
    Then it is accepted
    And pool "p1" has 1 active lease and 1 free slot

  Scenario: Taking several leases
    When the orchestrator takes lease "l1" on pool "p1"
    And the orchestrator takes lease "l2" on pool "p1"
    Then pool "p1" has 2 active leases and 0 free slots

  Scenario: No lease beyond the slots
    Given the orchestrator took lease "l1" on pool "p1"
    And the orchestrator took lease "l2" on pool "p1"
    When the orchestrator takes lease "l3" on pool "p1"
    Then it is rejected with SLOTS_EXHAUSTED
    And pool "p1" has 2 active leases and 0 free slots

  Scenario: Returning a lease frees its slot
    Given the orchestrator took lease "l1" on pool "p1"
    When the orchestrator returns lease "l1" on pool "p1"
    Then it is accepted
    And pool "p1" has 0 active leases and 2 free slots

  Scenario: The count never goes below zero
    When the orchestrator returns lease "l9" on pool "p1"
    Then it is rejected with LEASE_NOT_FOUND
    And pool "p1" has 0 active leases and 2 free slots

  Scenario: A lease is returned only once
    Given the orchestrator took lease "l1" on pool "p1"
    And the orchestrator returned lease "l1" on pool "p1"
    When the orchestrator returns lease "l1" on pool "p1"
    Then it is rejected with LEASE_NOT_FOUND
    And pool "p1" has 0 active leases and 2 free slots

  Scenario: An unknown pool has no leases and lends none
    Then pool "nope" has 0 active leases
    When the orchestrator takes lease "l1" on pool "nope"
    Then it is rejected with POOL_NOT_FOUND

  Scenario: Pools count their leases independently
    Given a ready pool "p2" with 4 slots
    When the orchestrator takes lease "l1" on pool "p1"
    And the orchestrator takes lease "l2" on pool "p2"
    And the orchestrator takes lease "l3" on pool "p2"
    Then pool "p1" has 1 active lease and 1 free slot
    And pool "p2" has 2 active leases and 2 free slots

  Scenario: A draining pool lends no more slots
    Given the orchestrator took lease "l1" on pool "p1"
    And pool "p1" is asked to drain within 30000 ms
    When the orchestrator takes lease "l2" on pool "p1"
    Then it is rejected with POOL_DRAINING
    And pool "p1" has 1 active lease and 1 free slot

  Scenario: A pool that is not ready lends no slots
    Given a registered pool "p3" that is still starting
    When the orchestrator takes lease "l1" on pool "p3"
    Then it is rejected with POOL_UNREADY

  Scenario: The registry lists pools sorted by id
    Given a ready pool "b-pool" with 1 slot
    And a ready pool "a-pool" with 1 slot
    Then the registry lists the pools "a-pool, b-pool, p1"
