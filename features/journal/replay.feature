Feature: The journal keeps the history, and the registry is its replay
  Every transition is an event in a durable journal; the registry is rebuilt by replaying it,
  so it survives a restart and any past moment can be recomputed.

  Scenario: The registry survives a reopen of the journal
    Given a journal in a fresh directory
    And pool "p1" was preloaded and became ready with 2 slots
    And the orchestrator took lease "l1" on pool "p1"
    When the journal is closed and opened again
    Then the replayed registry equals the registry before the restart
    And pool "p1" has 1 active lease and 1 free slot

  Scenario: Replay up to an event shows the past
    Given a journal in a fresh directory
    And pool "p1" was preloaded and became ready with 2 slots
    When the journal is replayed until the event "EngineSpawned"
    Then pool "p1" is live and not ready

  Scenario: A torn record that was never acknowledged is quarantined, not fatal
    Given a journal in a fresh directory
    And pool "p1" was preloaded and became ready with 2 slots
    When a torn record follows the last acknowledged one and the journal is opened again
    Then the journal opens
    And a quarantine file names the seq after the last one
    And the journal's last seq is the same as before

  Scenario: Damage to an acknowledged record refuses to open and names the way out
    Given a journal in a fresh directory
    And pool "p1" was preloaded and became ready with 2 slots
    When record 2 is corrupted and the journal is opened and replayed
    Then the error names seq 2 and the repair command that accepts the loss
    When the journal is repaired accepting the loss
    Then the journal opens
    And seq 2 is a JournalLossAccepted event and every other event is as it was
