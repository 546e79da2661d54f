Feature: Nothing of an engine is left behind
  An engine leads a session of its own, and every process it starts stays in that session,
  even one that moves to a process group of its own (a tensor-parallel worker, a forked
  helper) and so misses the signals sent to the engine's group. A stop sends SIGTERM to the
  whole session; once the engine itself has ended, whatever is left of its session is killed
  (SIGKILL) before the end is recorded. So a stop leaves nothing running, and a restart never
  starts beside the last engine's leftovers, which may still hold its GPU or its port.

  The workers here are engine-sim's (--fork-worker): a process in a group of its own that
  ignores SIGTERM.

  Scenario: A forked child that changed its group is gone after a stop
    Given a running daemon
    And pool "p1" is ready with an engine-sim started with "--fork-worker"
    Then the worker of engine 1 of pool "p1" runs in a group of its own, in its engine's session
    When pool "p1" is stopped
    Then pool "p1" reaches phase "stopped"
    And the worker of engine 1 of pool "p1" is gone
    And the last "EngineStopped" of pool "p1" has "graceful" true

  Scenario: An engine killed from outside leaves no worker beside its restart
    Given a running daemon on a manual clock
    And pool "p1" is ready with an engine-sim started with "--fork-worker"
    Then the worker of engine 1 of pool "p1" runs in a group of its own, in its engine's session
    When the engine of pool "p1" is killed by SIGKILL from outside the daemon
    Then pool "p1" is restarted at once
    And the worker of engine 1 of pool "p1" is gone
    And pool "p1" becomes ready
    And the worker of engine 2 of pool "p1" runs in a group of its own, in its engine's session
