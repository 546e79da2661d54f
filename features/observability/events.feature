Feature: The live event stream and the registry as it was
  GET /v2/events with Accept: text/event-stream streams every event of the journal as it
  becomes durable: "id:" is its seq, "event:" its kind, "data:" the envelope as the journal
  export writes it. A client that reconnects with the last id it received (Last-Event-ID), or
  with ?since= the next seq, continues with no gap and no duplicate: the stream reads the
  journal from that seq. GET /v2/pools?at_seq=N is the registry as it was right after event N,
  replayed from the nearest snapshot, as `pool-managerd replay --until-seq N` prints it.

  Scenario: The event stream delivers a preload's events in order
    Given a running daemon
    And a client follows the event stream
    When pool "p1" is preloaded with an engine-sim
    Then the stream delivers "PreloadRequested, EngineSpawned, HealthCheckPassed, PoolReady" of pool "p1" in this order
    And the stream's ids are consecutive seqs

  Scenario: A reconnect with the last id resumes with no gap and no duplicate
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And a client follows the event stream from seq 1
    And the client has received 3 events and disconnected
    When the orchestrator takes lease "A" on pool "p1"
    And the orchestrator returns lease "A" on pool "p1"
    And the client reconnects with the last id it received
    Then the client has received every seq from 1 to the daemon's journal seq exactly once

  Scenario: A reconnect with ?since= resumes with no gap and no duplicate
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And a client follows the event stream from seq 1
    And the client has received 2 events and disconnected
    When the orchestrator takes lease "A" on pool "p1"
    And the client reconnects with ?since= the next seq
    And the orchestrator returns lease "A" on pool "p1"
    Then the client has received every seq from 1 to the daemon's journal seq exactly once

  Scenario: The list of pools at an earlier seq shows the pool as it was
    Given a running daemon
    And a ready pool "p1" with 2 slots
    And the journal seq that the daemon's health shows is noted
    When the orchestrator takes lease "A" on pool "p1"
    And the list of pools at the noted seq is requested
    Then the answer is 200
    And the answer lists pool "p1" with "active_leases" 0
    And the answer lists pool "p1" with "slots_free" 2
    And pool "p1" has 1 active lease and 1 free slot
