Feature: The daemon's own health
  GET /health says whether the daemon is up, which version runs, how far its journal goes,
  how many pools it knows and whether it found a GPU. It works before any pool exists.

  Scenario: A daemon without pools is healthy
    Given a running daemon
    When the daemon's health is requested
    Then the answer is 200
    And the answer's "status" is "ok"
    And the answer's "pools" is 0
    And the answer names the daemon's version
    And the answer's "journal_seq" is a number

  Scenario: Health counts the pools and follows the journal
    Given a running daemon
    And the journal seq that the daemon's health shows is noted
    When pool "p1" is preloaded with an engine-sim
    Then the answer is 200
    And the daemon's health shows 1 pool and a journal seq past the noted one

  Scenario: A node without a GPU says so
    Given a running daemon
    When the daemon's health is requested
    Then the answer is 200
    And the answer's "gpu.available" is false
    And the answer's "gpu.count" is 0
    And the answer's "gpu.reason" mentions "lists no GPU"
    And the answer's "gpu.reason" mentions "or run with --dev (require_gpu = false) for CPU-only engines"

  Scenario: The GPUs the driver lists are counted
    Given a running daemon on a node whose NVIDIA driver lists 2 GPUs
    When the daemon's health is requested
    Then the answer is 200
    And the answer's "status" is "ok"
    And the answer's "gpu.available" is true
    And the answer's "gpu.count" is 2
