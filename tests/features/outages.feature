Feature: Outages cost time, not jobs
  With PostgreSQL unreachable, enrich (which reads the coverage ledger) and
  store_pois wait, parked, without counting a retry; once it is back every
  job lands. Only a job that waited OUTAGE_MAX_S is dead-lettered, with a
  message naming the outage. A row the database refuses is no outage: it is
  retried, then dead-lettered.

  Background:
    Given the stand-in Overpass server is running
    And the POI table and the coverage ledger are empty

  Scenario: enrich jobs sent while PostgreSQL is down wait, and all are stored once it is back
    Given the setting ENRICH_COVERAGE is "true"
    And the database is down
    And workers are running
    When I enqueue 6 enrich jobs, one tile each, with tags "amenity"
    And PostgreSQL stays down longer than RETRY_MAX retries would last
    Then no job is dead-lettered
    And every job waited for PostgreSQL more times than RETRY_MAX allows retries
    When the database comes back
    And all jobs are done
    Then the stand-in server received 6 calls
    And the database holds exactly the POIs the stand-in server has for those jobs
    And no job is dead-lettered

  Scenario: A store that meets PostgreSQL down waits beyond STORE_MAX_RETRIES, with no second call
    Given the setting STORE_MAX_RETRIES is "1"
    And the database is down
    And workers are running
    When I enqueue 1 enrich job, one tile each, with tags "amenity"
    And PostgreSQL stays down longer than STORE_MAX_RETRIES retries would last
    Then no job is dead-lettered
    And every job waited for PostgreSQL more times than STORE_MAX_RETRIES allows retries
    When the database comes back
    And all jobs are done
    Then the stand-in server received 1 call
    And the database holds exactly the POIs the stand-in server has for those jobs
    And no job is dead-lettered

  Scenario: A job that waits longer than OUTAGE_MAX_S is dead-lettered, naming the outage
    Given the setting ENRICH_COVERAGE is "true"
    And the setting OUTAGE_MAX_S is "2"
    And the database is down
    And workers are running
    When I enqueue 1 enrich job, one tile each, with tags "amenity"
    And all jobs are done
    Then the stand-in server received 0 calls
    # Not the waited time: on a busy machine the last attempt runs late ("3 s").
    And 1 job is dead-lettered with an error mentioning "(OUTAGE_MAX_S=2): dead-lettered; send the job (enrich) again once PostgreSQL answers"

  Scenario: A row the database refuses is retried, then dead-lettered: no endless outage
    Given the setting STORE_MAX_RETRIES is "2"
    And the database refuses every POI
    And workers are running
    When I enqueue 1 enrich job, one tile each, with tags "amenity"
    And all jobs are done
    Then the stand-in server received 1 call
    And 1 job is dead-lettered with an error mentioning "violates check constraint"
    And no job waited for PostgreSQL

  Scenario: enrich jobs sent while the state backend is down wait in the broker's delay queue
    Given the setting ENRICH_COVERAGE is "true"
    And the state backend is down
    And workers are running
    When I enqueue 2 enrich jobs, one tile each, with tags "amenity"
    And the state backend stays down longer than RETRY_MAX retries would last
    Then no job is dead-lettered
    And the workers put waits in the broker's delay queue, the state backend being down
    When the state backend comes back
    And all jobs are done
    Then the stand-in server received 2 calls
    And the database holds exactly the POIs the stand-in server has for those jobs
    And no job is dead-lettered
