Feature: Pool health in the registry
  The registry answers the orchestrator's questions: is the pool live, is it ready, is it
  draining, and what went wrong last. Readiness comes only from a passed health check.

  Scenario: A pool that is starting is live but not ready
    Given a registered pool "p1" that is still starting
    Then pool "p1" is live and not ready
    And pool "p1" is in phase "starting"

  Scenario: A passed health check makes the pool ready
    Given a registered pool "p1" that is still starting
    When the engine of pool "p1" passes its health check with 4 slots
    And the handoff file of pool "p1" is written
    Then pool "p1" is live and ready
    And pool "p1" is in phase "ready"
    And pool "p1" has 0 active leases and 4 free slots

  Scenario: A failed preload leaves the pool unready with the reason
    Given a registered pool "p1" that is still starting
    When the engine of pool "p1" never becomes healthy
    Then pool "p1" is not live and not ready
    And pool "p1" has a last error containing "health"

  Scenario: A later success clears the last error
    Given a registered pool "p1" that is still starting
    And the engine of pool "p1" never became healthy
    When pool "p1" is preloaded again and becomes ready with 2 slots
    Then pool "p1" is live and ready
    And pool "p1" has no last error

  Scenario: An unknown pool is not found
    Then pool "ghost" is not in the registry
