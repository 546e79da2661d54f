Feature: A restarted daemon serves the same registry
  The registry is the replay of the journal: a daemon stopped and started again over the
  same journal serves the same pools. Engines outlive the daemon: one that still runs is
  adopted again, with its leases.

  Scenario: Stopped and failed pools are the same after a restart
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And pool "p1" was stopped
    And pool "p2" failed to preload because its engine exited while loading
    And the list of pools is noted
    When the daemon is restarted over the same journal
    Then the list of pools equals the noted one, heartbeats aside
    And pool "p1" is in phase "stopped"
    And pool "p2" has a last error containing "exit code 3"

  Scenario: A running engine is adopted with its leases
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And the engine of pool "p1" is noted
    And the list of pools is noted
    When the daemon is restarted over the same journal
    Then pool "p1" is live and ready
    And the engine of pool "p1" is the noted one, still running
    And pool "p1" has 1 active lease and 1 free slot
    And the list of pools equals the noted one, heartbeats and seqs aside
    When the orchestrator returns lease "A" on pool "p1"
    Then the answer is 200
    And pool "p1" has 0 active leases and 2 free slots
