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
    When the orchestrator drains pool "p1" with a deadline of 1 ms
    Then the answer is 202
    And the answer's "draining" is true
    And pool "p1" shows "draining" true
    And the events of pool "p1" include 1 "DrainRequested"
    And the last "DrainRequested" of pool "p1" has "deadline_ms" 60000
    When the orchestrator returns lease "A" on pool "p1"
    Then the answer is 200
    And pool "p1" reaches phase "stopped"
    And the events of pool "p1" include 1 "DrainCompleted"
    And the last "DrainCompleted" of pool "p1" has "outcome" "graceful"
    And the last "DrainCompleted" of pool "p1" has "leases_at_stop" 0

  Scenario: The orchestrator's drain is accepted at once, before the leases come back
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    When the orchestrator drains pool "p1" with a deadline of 5000 ms
    Then the answer is 202
    And the answer has exactly the fields "pool_id, draining"
    And the answer's "pool_id" is "p1"
    And the answer's "draining" is true
    And pool "p1" shows "draining" true
    And pool "p1" has 1 active lease and 1 free slot
    When the orchestrator returns lease "A" on pool "p1"
    Then pool "p1" reaches phase "stopped"

  Scenario: A drain records how long it took
    Given a running daemon on a manual clock
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And pool "p1" is asked to drain within 60000 ms
    When 1500 ms pass
    And the orchestrator returns lease "A" on pool "p1"
    Then pool "p1" reaches phase "stopped"
    And the last "DrainCompleted" of pool "p1" has "duration_ms" 1500
    And the last "DrainCompleted" of pool "p1" has "outcome" "graceful"

  Scenario: At the deadline the daemon warns of each lease still held
    Given a running daemon in its own process
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And the orchestrator took lease "B" on pool "p1"
    And pool "p1" is asked to drain within 300 ms
    Then pool "p1" reaches phase "stopped"
    And the daemon's log warns that lease "A" of pool "p1" was held at the drain deadline
    And the daemon's log warns that lease "B" of pool "p1" was held at the drain deadline
    And the last "DrainCompleted" of pool "p1" has "outcome" "force_stopped"
    And the last "DrainCompleted" of pool "p1" has "leases_at_stop" 2
