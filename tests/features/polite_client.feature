Feature: One fleet, one polite client of each Overpass instance
  However many worker processes call it, an Overpass instance sees one polite
  client: a 429 stops every process for the pause with one status read, the
  public profile keeps one call in flight and spaces the calls, several
  private endpoints share the work around a failing one with exact budgets,
  and a 406 holds the backlog instead of dead-lettering it. The figures the
  closing note needs are printed (pytest -s).

  Background:
    Given the stand-in Overpass server is running
    And the POI table is empty

  Scenario: A 429 pauses the whole fleet; one status read; then every job is stored
    Given the stand-in server answers every call with latency 100 ms
    And the stand-in server will answer "429"
    And the setting RATE_LIMIT_PAUSE_S is "3"
    And 20 enrich jobs on distinct boxes are queued
    And 2 worker processes with 4 threads are running
    When every queued job is stored
    Then the fleet paused at least 3 s right after the 429, and no request reached the stand-in server in the pause but one status read
    And the stand-in server answered 1 "429" and 1 status read
    And no job is dead-lettered

  Scenario: A 429 pauses the fleet also for jobs admitted before it that linger before their call
    Given the stand-in server answers every call with latency 100 ms
    And the stand-in server will answer "429"
    And the setting RATE_LIMIT_PAUSE_S is "3"
    And the setting FAILPOINTS is "semaphore.acquired=sleep:0-0.3,quota.admitted=sleep:0-0.3"
    And 20 enrich jobs on distinct boxes are queued
    And 2 worker processes with 4 threads are running
    When every queued job is stored
    Then the fleet paused at least 3 s right after the 429, and no request reached the stand-in server in the pause but one status read
    And the stand-in server answered 1 "429" and 1 status read
    And no job is dead-lettered

  Scenario: The public profile keeps one call in flight fleet-wide and spaces the calls
    # Calls that take 1.5 s would overlap under a second permit (the pacing lets
    # one start every second); the instant ones are followed as soon as the pacing allows.
    Given the stand-in server will answer "stall:1.5, ok, stall:1.5, ok, stall:1.5, ok, stall:1.5, ok"
    And the setting OVERPASS_PROFILE is "public"
    And the setting PACING_MIN_INTERVAL_S is "1"
    And the setting PACING_INTERVAL_S is "1"
    And 8 enrich jobs on distinct boxes are queued
    And 2 worker processes with 4 threads are running
    When every queued job is stored
    Then the stand-in server never had more than 1 call in flight
    And the calls it received started at least 1 s apart, less a tolerance of 0.2 s
    And no job is dead-lettered

  Scenario: By default the public profile spreads what is left of the day's budget over the rest of the day
    # With no call yet a call is assumed to cost 2 s of the 300 s of server time: 150 calls, minutes
    # apart. Here the day has seen cheap calls, so the requests left bind, as they do for light queries.
    Given the setting OVERPASS_PROFILE is "public"
    And the day so far counts 100 calls and 1 s of server time
    And 3 enrich jobs on distinct boxes are queued
    And 2 worker processes with 2 threads are running
    When every queued job is stored
    Then the calls it received started at least the rest of the UTC day over the requests left apart, less 0.2 s
    And the metrics show that pacing interval

  Scenario: The public profile does not start without a contact
    Given the setting OVERPASS_PROFILE is "public"
    And the setting OVERPASS_CONTACT is empty
    Then workers refuse to start, saying "OVERPASS_CONTACT"
    And the stand-in server received 0 calls

  Scenario Outline: A public endpoint is never one of several
    Given the setting OVERPASS_URL is "<urls>"
    Then workers refuse to start, saying "one user, one script"

    Examples:
      | urls                                                                                   |
      | https://overpass-api.de/api/interpreter,https://overpass.kumi.systems/api/interpreter |
      | https://overpass-api.de/api/interpreter,http://127.0.0.1:9/api/interpreter            |

  Scenario: Two private endpoints: one answers 504 until its breaker opens, the jobs flow to the other
    Given a second stand-in Overpass server is running
    And the first stand-in server answers "504" from now on
    And the workers call both stand-in servers
    And the setting BREAKER_COOLDOWN_S is "60"
    And 12 enrich jobs on distinct boxes are queued
    And 2 worker processes with 4 threads are running
    When every queued job is stored
    Then the first stand-in server's circuit is open, and it got no call after it opened
    And each endpoint's quota counted exactly the calls it received
    And each endpoint's quota counted the bytes it sent, within the documented bound
    And no job is dead-lettered

  Scenario: Two private endpoints spend their byte budgets within the documented bound
    Given a second stand-in Overpass server is running
    And the workers call both stand-in servers
    And the setting QUOTA_BYTES is "20000"
    And 12 enrich jobs on distinct boxes are queued
    And 2 worker processes with 4 threads are running
    When the fleet has nothing left to do before the next quota window
    Then each endpoint's quota counted exactly the calls it received
    And each endpoint's quota counted the bytes it sent, within the documented bound
    And every job is stored or parked for the next quota window
    And no job is dead-lettered

  Scenario: A 406 on every call holds the endpoint: no dead letter, the backlog intact, the hold shown
    Given the stand-in server answers "406" from now on
    And the setting OVERPASS_PROFILE is "public"
    And the setting PACING_MIN_INTERVAL_S is "1"
    And the setting PACING_INTERVAL_S is "1"
    And 6 enrich jobs on distinct boxes are queued
    And 2 worker processes with 4 threads are running
    When every queued job waits parked
    Then no job is dead-lettered
    And no POI is stored
    And the stand-in server received at most 1 call
    And enrichment status shows the endpoint held
    And the metrics show the endpoint held
    When I run enrichment release-hold for the endpoint
    Then enrichment status shows the endpoint not held

  Scenario: A 406 hold on a private endpoint lifts when workers start with other settings
    Given the stand-in server answers "406" from now on
    And 2 enrich jobs on distinct boxes are queued
    And 1 worker processes with 2 threads are running
    When every queued job waits parked
    Then enrichment status shows the endpoint held
    When the workers restart with the setting OVERPASS_CONTACT "someone-else@example.org"
    Then enrichment status shows the endpoint not held
    And no job is dead-lettered
