Feature: Engine processes
  An engine runs in its own session and process group (signals reach all of it, and it
  outlives the daemon), with stdin closed and an environment of PATH, HOME and LANG plus
  what the prepared engine and its device mask give. Stopping sends SIGTERM to the group and
  SIGKILL after the grace period. The exit of an engine is seen at once, not at the next
  health probe.

  (The daemon under test probes ready engines only every 60 s and restarts a failed engine
  only after 60 s.)

  Scenario: An engine leads its own session and process group, stdin closed
    Given a running daemon
    And a ready pool "p1" with 1 slot
    Then the engine of pool "p1" leads its own process group
    And the engine of pool "p1" leads its own session
    And the standard input of the engine of pool "p1" is /dev/null

  Scenario: An engine sees only what it is given of the environment
    Given a running daemon
    And a ready pool "p1" with 1 slot
    Then the engine of pool "p1" sees only PATH, HOME and LANG of the daemon's environment

  Scenario: The prepared environment and the device mask reach the engine
    Given a running daemon on a node whose NVIDIA driver lists 2 GPUs
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "env.LLAMA_ARG_THREADS" set to "4"
    And the prepared engine of pool "p1" has "env.HF_HOME" set to "/var/cache/models"
    And the prepared engine of pool "p1" has "device_mask" set to "GPU0,GPU1"
    When pool "p1" is preloaded
    Then the answer is 200
    And the engine of pool "p1" sees only PATH, HOME and LANG of the daemon's environment, and:
      | LLAMA_ARG_THREADS    | 4                 |
      | HF_HOME              | /var/cache/models |
      | CUDA_VISIBLE_DEVICES | 0,1               |
      | CUDA_DEVICE_ORDER    | PCI_BUS_ID        |

  Scenario: Stopping an engine asks it to end with SIGTERM
    Given a running daemon
    And a ready pool "p1" with 1 slot
    When pool "p1" is stopped
    Then the answer is 202
    And pool "p1" reaches phase "stopped"
    And pool "p1" is not live and not ready
    And the engine of pool "p1" is gone
    And the log file of pool "p1" contains "received SIGTERM, shutting down"
    And the pid file of pool "p1" is gone
    And the events of pool "p1" record "EngineStopped" with "graceful" true

  Scenario: An engine that ignores SIGTERM is killed after the grace period
    Given a running daemon configured with:
      | stop.grace_ms | 300 |
    And pool "p1" is ready with an engine-sim started with "--ignore-sigterm"
    When pool "p1" is stopped
    Then the answer is 202
    And pool "p1" reaches phase "stopped"
    And the engine of pool "p1" is gone
    And the log file of pool "p1" contains "received SIGTERM, ignoring it"
    And the events of pool "p1" record "EngineStopped" with "graceful" false
    And the engine of pool "p1" was stopped no sooner than 300 ms after the stop was asked
    And the pid file of pool "p1" is gone

  Scenario: Removing a pool stops its engine and forgets the pool
    Given a running daemon
    And a ready pool "p1" with 1 slot
    When pool "p1" is removed
    Then the answer is 200
    And the engine of pool "p1" is gone
    And pool "p1" is not in the registry
    And the pid file of pool "p1" is gone
    And the handoff file of pool "p1" is gone

  Scenario: The exit of a ready engine is seen at once
    Given a running daemon configured with:
      | health.ready_interval_ms | 60000 |
    And pool "p1" is ready with an engine-sim started with "--crash-after-ms 1500 --exit-code 7"
    When the engine of pool "p1" exits by itself
    Then pool "p1" was not ready any more 1000 ms after its engine exited
    And the events of pool "p1" record "EngineExited" with "reason" "crash"
    And the last "EngineExited" of pool "p1" has "exit_code" 7
    And the pid file of pool "p1" is gone
