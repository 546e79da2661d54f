Feature: Engines started by someone else (OC-POOL-3101, OC-POOL-3102)
  An engine provisioner on the node may start an engine itself and announce it with a handoff
  file in the daemon's engines folder. The daemon watches that folder: a new or changed file
  of a healthy engine registers its pool, ready, with the slots, device mask and version the
  file gives, any previous error cleared and the heartbeat set. Its pid, when given, is
  watched like one of ours. A bad file (not JSON, a field missing or of the wrong type) is
  recorded as a HandoffRejected naming the file and the field; no pool is touched and the
  daemon keeps watching.

  Scenario: A complete handoff file registers a ready pool
    Given a running daemon
    And an engine-sim runs outside the daemon for pool "ext" with 5 slots
    When its provisioner writes a handoff file for pool "ext"
    Then pool "ext" becomes ready
    And pool "ext" shows "slots_total" 5
    And pool "ext" shows "device_mask" "0,1"
    And pool "ext" shows "engine_version" "ext-7"
    And pool "ext" runs the external engine
    And pool "ext" has a heartbeat
    And pool "ext" has no last error
    And the events of pool "ext" include 1 "HandoffRegistered"

  Scenario: A minimal handoff file is enough
    Given a running daemon
    And an engine-sim runs outside the daemon for pool "ext" with 3 slots
    When its provisioner writes a minimal handoff file for pool "ext"
    Then pool "ext" becomes ready
    And pool "ext" shows "slots_total" 3
    And pool "ext" shows "device_mask" null
    And pool "ext" has 0 active leases and 3 free slots

  Scenario: A handoff clears the error of an earlier failed preload
    Given a running daemon
    And pool "ext" failed to preload because its engine exited while loading
    And an engine-sim runs outside the daemon for pool "ext" with 2 slots
    When its provisioner writes a handoff file for pool "ext"
    Then pool "ext" becomes ready
    And pool "ext" has no last error
    And pool "ext" shows "slots_total" 2

  Scenario: Leases work on a handed-off engine
    Given a running daemon
    And an engine-sim runs outside the daemon for pool "ext" with 2 slots
    When its provisioner writes a handoff file for pool "ext"
    Then pool "ext" becomes ready
    When the orchestrator takes lease "A" on pool "ext"
    Then pool "ext" has 1 active lease and 1 free slot

  Scenario: A handoff file with a bad field is rejected, naming the file and the field
    Given a running daemon
    And an engine-sim runs outside the daemon for pool "ext" with 2 slots
    When its provisioner writes a handoff file for pool "ext" whose "slots_total" is "many"
    Then the daemon records a rejected handoff of the file "ext-r0.json" for the field "slots_total"
    And pool "ext" is not in the registry
    When the daemon's health is requested
    Then the answer is 200

  Scenario: A file that is not JSON is rejected and the daemon keeps watching
    Given a running daemon
    And an engine-sim runs outside the daemon for pool "ext" with 2 slots
    When a file "junk.json" that is not JSON appears in the daemon's engines folder
    Then the daemon records a rejected handoff of the file "junk.json" for the field "json"
    When its provisioner writes a handoff file for pool "ext"
    Then pool "ext" becomes ready
