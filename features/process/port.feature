Feature: The engine's port belongs to its engine
  An engine's port held by another process fails the start with PORT_IN_USE (500), naming the
  holder's pid and command line; the holder is never signalled (nothing proves it ours).
  Before a spawn, any process listening on the port fails the start. Once the engine answers
  healthy, the socket listening on its port must be held by the engine's session (its
  `/proc/net/tcp` inode among the engine's `/proc/<pid>/fd`), else someone else answered for it:
  the start fails and the engine is killed instead of becoming ready. (An engine left running
  by an earlier life answered /health 200 for a new engine that had exited at once, port in
  use, and the pool flapped between ready and crashed.)

  Scenario: A foreign server answering /health on the port fails the preload before any spawn
    Given a running daemon
    And pool "p1" is prepared as an engine-sim
    And a foreign HTTP server answers 200 on /health at the port of pool "p1"
    When pool "p1" is preloaded
    Then the answer is 500 with code "PORT_IN_USE"
    And the answer's error names the pid and command line of the foreign server of pool "p1"
    And pool "p1" is not live and not ready
    And pool "p1" has a last error naming the pid and command line of its foreign server
    And the events of pool "p1" record "PreloadFailed" with "failure" "port_in_use"
    And the events of pool "p1" include no "EngineSpawned"
    And the events of pool "p1" include no "PoolReady"
    And the foreign server of pool "p1" still runs

  Scenario: An engine whose port is answered by someone else fails its start instead of becoming ready
    Given a running daemon
    And pool "p1" is prepared as an engine that never listens on its port
    When pool "p1" is preloaded without waiting
    Then pool "p1" becomes live
    When a foreign HTTP server starts answering 200 on /health at the port of pool "p1"
    Then pool "p1" has a last error naming the pid and command line of its foreign server
    And the events of pool "p1" record "PreloadFailed" with "failure" "port_in_use"
    And pool "p1" settles in backoff
    And the events of pool "p1" include, in this order, "EngineSpawned, PreloadFailed, EngineStopped"
    And the events of pool "p1" include no "HealthCheckPassed"
    And the events of pool "p1" include no "PoolReady"
    And pool "p1" is not live and not ready
    And the foreign server of pool "p1" still runs
