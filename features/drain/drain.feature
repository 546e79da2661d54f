Feature: Draining a pool (OC-CTRL-2002)
  A drain lets the orchestrator take a pool out of service without cutting requests short:
  new leases are refused at once with POOL_DRAINING, leases already held may be returned, and
  the engine is stopped when the last lease comes back, or at the deadline with leases still
  held. The pool ends stopped, not draining; DrainCompleted records how.

  Scenario: A drain refuses new leases and stops the engine when the last lease comes back
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And pool "p1" is asked to drain within 60000 ms
    When the orchestrator takes lease "B" on pool "p1"
    Then the answer is 409 with code "POOL_DRAINING"
    And pool "p1" shows "draining" true
    When the orchestrator returns lease "A" on pool "p1"
    Then pool "p1" reaches phase "stopped"
    And pool "p1" shows "draining" false
    And pool "p1" shows "ready" false
    And the engine of pool "p1" is gone
    And the last "DrainCompleted" of pool "p1" has "outcome" "graceful"
    And the last "DrainCompleted" of pool "p1" has "leases_at_stop" 0

  Scenario: A drain with no lease completes at once
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And pool "p1" is asked to drain within 60000 ms
    Then pool "p1" reaches phase "stopped"
    And the last "DrainCompleted" of pool "p1" has "outcome" "graceful"

  Scenario: At the deadline the engine is stopped with the leases still held
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And pool "p1" is asked to drain within 300 ms
    Then pool "p1" reaches phase "stopped"
    And the engine of pool "p1" is gone
    And the last "DrainCompleted" of pool "p1" has "outcome" "force_stopped"
    And the last "DrainCompleted" of pool "p1" has "leases_at_stop" 1

  Scenario: A second drain while one runs joins it
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And pool "p1" is asked to drain within 60000 ms
    And pool "p1" is asked to drain within 1 ms
    Then pool "p1" shows "draining" true
    And the events of pool "p1" include 1 "DrainRequested"
    When the orchestrator returns lease "A" on pool "p1"
    Then pool "p1" reaches phase "stopped"
