Feature: Engines outlive the daemon
  Killing, upgrading or restarting pool-managerd never restarts a serving engine. Engines run
  in their own session, so even a kill -9 of the daemon leaves them serving. At its next start
  the daemon replays its journal and checks every engine the journal says is running: alive,
  with the same pid, start time and boot id (recorded at spawn), it is adopted (EngineAdopted)
  and keeps its leases, whatever binary it runs now (a launcher `exec`s the engine; an upgrade
  retargets a symlink: logged, not refused); gone, it is EngineLost and the restart policy
  starts a new one. No pool ever gets a second engine. Here the daemon is the real
  `pool-managerd serve` process, killed for real.

  Scenario: A daemon killed with SIGKILL adopts its engine again, with its lease
    Given a running daemon in its own process
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And the engine of pool "p1" is noted
    When the daemon process is killed with SIGKILL
    Then the noted engine of pool "p1" is still running
    When the daemon process is started again
    Then pool "p1" is live and ready
    And the engine of pool "p1" is the noted one, still running
    And pool "p1" has 1 active lease and 1 free slot
    And the events of pool "p1" include, in this order, "EngineSpawned, PoolReady, LeaseGranted, EngineAdopted"
    And the events of pool "p1" include 1 "EngineSpawned"
    When the orchestrator returns lease "A" on pool "p1"
    Then the answer is 200
    And pool "p1" has 0 active leases and 2 free slots

  Scenario: Every pool keeps its own engine across a kill -9
    Given a running daemon in its own process
    And a ready pool "p1" with 2 slots
    And a ready pool "p2" with 1 slot
    And the orchestrator took lease "A" on pool "p2"
    And the engine of pool "p1" is noted
    And the engine of pool "p2" is noted
    When the daemon process is killed with SIGKILL
    And the daemon process is started again
    Then pool "p1" is live and ready
    And pool "p2" is live and ready
    And the engine of pool "p1" is the noted one, still running
    And the engine of pool "p2" is the noted one, still running
    And pool "p2" has 1 active lease and 0 free slots
    And the events of pool "p1" include 1 "EngineSpawned"
    And the events of pool "p2" include 1 "EngineSpawned"

  Scenario: An engine that died while the daemon was down is lost and started again
    Given a running daemon in its own process, configured with:
      | backoff.min_ms     | 50  |
      | backoff.initial_ms | 100 |
      | backoff.max_ms     | 100 |
    And a ready pool "p1" with 2 slots
    And the orchestrator took lease "A" on pool "p1"
    And the engine of pool "p1" is noted
    When the daemon process is killed with SIGKILL
    And the noted engine of pool "p1" is killed by SIGKILL while the daemon is down
    And the daemon process is started again
    Then pool "p1" becomes ready
    And pool "p1" runs a new engine, not the noted one
    And pool "p1" has 0 active leases and 2 free slots
    And the events of pool "p1" include, in this order, "LeaseGranted, EngineLost, EngineSpawned, PoolReady"
    And the events of pool "p1" include no "EngineAdopted"

  Scenario: A clean stop of the daemon (SIGTERM) leaves its engines serving
    Given a running daemon in its own process
    And a ready pool "p1" with 2 slots
    And the engine of pool "p1" is noted
    When the daemon process is stopped with SIGTERM
    Then the noted engine of pool "p1" is still running
    When the daemon process is started again
    Then pool "p1" is live and ready
    And the engine of pool "p1" is the noted one, still running
    And the events of pool "p1" include, in this order, "PoolReady, EngineAdopted"

  Scenario: An engine started by a launcher script that execs it is adopted after a kill -9
    Given a running daemon in its own process
    And a ready pool "p1" whose engine-sim is started by a launcher script that execs it
    And the orchestrator took lease "A" on pool "p1"
    And the engine of pool "p1" is noted
    Then the journal records the boot id of this machine for the engine of pool "p1"
    And the journal records engine-sim, not its launcher, as the executable of pool "p1"
    When the daemon process is killed with SIGKILL
    And the daemon process is started again
    Then pool "p1" is live and ready
    And the engine of pool "p1" is the noted one, still running
    And pool "p1" has 1 active lease and 1 free slot
    And the events of pool "p1" include, in this order, "EngineSpawned, PoolReady, LeaseGranted, EngineAdopted"
    And the events of pool "p1" include no "EngineLost"
    And the events of pool "p1" include 1 "EngineSpawned"

  Scenario: An engine whose binary symlink was retargeted by an upgrade is adopted after a kill -9
    Given a running daemon in its own process
    And a ready pool "p1" whose engine-sim binary is a symlink
    And the engine of pool "p1" is noted
    When the symlink of pool "p1" is retargeted to another copy of engine-sim
    And the daemon process is killed with SIGKILL
    And the daemon process is started again
    Then pool "p1" is live and ready
    And the engine of pool "p1" is the noted one, still running
    And the events of pool "p1" include, in this order, "EngineSpawned, PoolReady, EngineAdopted"
    And the events of pool "p1" include no "EngineLost"
    And the events of pool "p1" include 1 "EngineSpawned"
