Feature: Overpass enrichment under a fleet-wide quota, semaphore and circuit breaker
  Every Overpass call is admitted by three middlewares whose state lives in
  Redis and is shared by every worker process: one budget, one set of
  permits, one breaker.

  Background:
    Given the stand-in Overpass server is running
    And the POI table is empty

  Scenario: Successful enrichment updates POIs and counts a success
    Given the database holds a stale copy of the POIs of box "48.85,2.29,48.86,2.30" with tags "amenity"
    And workers are running
    When I enqueue an enrich job for box "48.85,2.29,48.86,2.30" with tags "amenity"
    And all jobs are done
    Then the stand-in server received 1 call
    And the database holds exactly the POIs the stand-in server has for that job
    And every stored POI has the position and tags the stand-in server sent
    And the workers counted 1 "success" outcome

  @rabbitmq_fast
  Scenario: Exhausted quota makes no outbound call, counts quota_denied, and the job runs after the window resets
    Given the setting QUOTA_REQUESTS is "1"
    And the setting QUOTA_WINDOW_S is "4"
    And workers are running
    When I wait for the start of a quota window of 4 seconds
    And I enqueue an enrich job for box "48.85,2.29,48.86,2.30" with tags "amenity"
    And I enqueue an enrich job for box "52.51,13.38,52.52,13.40" with tags "amenity"
    And the workers have counted 1 "quota_denied" outcome
    Then the stand-in server received 1 call
    When all jobs are done
    Then the stand-in server received 2 calls
    And the second call was made in a later quota window than the first
    And no job is dead-lettered

  Scenario: A server-time budget admits the calls it covers and defers the rest to the next window
    Given the stand-in server answers every call with latency 600 ms
    And the setting QUOTA_SERVER_S is "2"
    And the setting QUOTA_WINDOW_S is "5"
    And workers are running
    When I wait for the start of a quota window of 5 seconds
    And I enqueue 6 enrich jobs
    And all jobs are done
    Then the stand-in server received 6 calls
    And no job is dead-lettered
    And the calls spanned at least 2 quota windows, each within its server time plus the calls in flight
    And the server time charged is never under the stand-in's own measure and at most 10% over

  Scenario: Repeated failures open the circuit and later jobs make no call
    Given the stand-in server answers "504" from now on
    And the setting RETRY_MAX is "0"
    And the setting BREAKER_COOLDOWN_S is "60"
    And workers are running
    When I enqueue 3 enrich jobs
    And all jobs are done
    Then the stand-in server received 3 calls
    And the circuit breaker is open
    When I enqueue 2 enrich jobs
    And the workers have counted 2 "circuit_open" outcomes
    Then the stand-in server received 3 calls

  Scenario: A half-open probe success closes the circuit
    Given the stand-in server answers "504" from now on
    And the stand-in server answers every call with latency 300 ms
    And the setting RETRY_MAX is "0"
    And the setting BREAKER_COOLDOWN_S is "2"
    And workers are running
    When I enqueue 3 enrich jobs
    And all jobs are done
    Then the circuit breaker is open
    When the stand-in server heals
    And I enqueue 4 enrich jobs
    And all jobs are done
    Then the stand-in server received 7 calls
    And the first call after the failures ran alone
    And the circuit breaker is closed
    And the workers counted 4 "success" outcomes

  Scenario: Timeouts until retries run out count a failure and dead-letter the job
    Given the stand-in server answers "stall:30" from now on
    And the setting OVERPASS_HTTP_TIMEOUT_S is "0.5"
    And the setting RETRY_MAX is "2"
    And the setting BREAKER_FAILURE_THRESHOLD is "10"
    And workers are running
    When I enqueue 1 enrich job
    And all jobs are done
    Then the stand-in server received 3 calls
    And the stand-in server was asked to kill my queries 3 times
    And 1 job is dead-lettered with an error mentioning "retries exhausted after 3 attempts"
    And the workers counted 2 "timeout" outcomes
    And the workers counted 1 "retries_exhausted" outcome

  Scenario: The semaphore caps concurrent calls at the stand-in across two worker processes
    Given the stand-in server answers every call with latency 300 ms
    And the stand-in server refuses calls beyond 2 slots
    And the setting SEMAPHORE_PERMITS is "2"
    And 2 worker processes with 4 threads are running
    When I enqueue 12 enrich jobs
    And all jobs are done
    Then the stand-in server received 12 calls
    And at most 2 calls were in flight at the stand-in at once
    And the stand-in server refused no call for lack of a slot

  Scenario: A worker killed mid-call gives its permit back
    Given the stand-in server will answer "stall:30"
    And the setting SEMAPHORE_PERMITS is "1"
    And the setting SEMAPHORE_LEASE_S is "4"
    And workers are running
    When I enqueue 1 enrich job
    And a call is in flight at the stand-in
    And I kill -9 the worker process making it
    Then the permit is free again within 5 seconds
    When workers are started again
    And all jobs are done
    Then the database holds exactly the POIs the stand-in server has for that job
    And no job is dead-lettered

  Scenario: Two worker processes share one quota exactly
    Given the setting QUOTA_REQUESTS is "5"
    And the setting QUOTA_WINDOW_S is "3600"
    And 2 worker processes with 4 threads are running
    When I enqueue 12 enrich jobs
    And 7 jobs wait for the next quota window
    Then the stand-in server received 5 calls
    And the quota shows 5 requests used
    And the workers counted 3 "quota_denied" outcomes

  Scenario: A 429 pauses the job and caps the permits at the server's rate limit
    Given the stand-in server reports a rate limit of 1 slot
    And the stand-in server will answer "429"
    And the setting SEMAPHORE_PERMITS is "2"
    And the setting RATE_LIMIT_PAUSE_S is "1"
    And workers are running
    When I enqueue 1 enrich job
    And all jobs are done
    Then the stand-in server received 2 calls
    And the stand-in server was asked for its status once
    And the second call came at least 1 second after the first
    And the fleet's permits in effect are 1
    And the workers counted 1 "rate_limited" outcome
    And the workers counted 1 "success" outcome
