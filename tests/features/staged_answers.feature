Feature: Staged answers: one Overpass call per job, bounded messages
  A fetch stages its answer in the state backend (Redis), in bounded chunks,
  under a key derived from its message id, before it hands the POIs on; the
  store messages carry only a reference. A fetch retried after its call
  hands on only what was not handed on, and never calls Overpass again.

  Background:
    Given the stand-in Overpass server is running
    And the POI table is empty

  Scenario: A hand-off that fails after every message makes no second Overpass call
    Given the setting STAGE_CHUNK_BYTES is "20000"
    And the setting RETRY_MAX is "20"
    And the setting FAILPOINTS is "fetch.sent=raise:1"
    And workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.05,2.05" with tags "amenity,shop"
    And all jobs are done
    Then the stand-in server received 1 call
    And the database holds exactly the POIs the stand-in server has for that job
    And every chunk was stored once, 2 chunks or more
    And no staged POIs are left
    And no job is dead-lettered

  Scenario: A split whose hand-off fails sends each child once
    Given the stand-in server will answer "timeout-remark"
    And the setting RETRY_MAX is "20"
    And the setting FAILPOINTS is "fetch.sent=raise:1"
    And workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.05,2.05" with tags "amenity,shop"
    And all jobs are done
    Then the stand-in server received 5 calls
    And the stand-in server received no query twice
    And the database holds exactly the POIs the stand-in server has for that job
    And no job is dead-lettered

  Scenario: With the database down, a large answer waits in bounded chunks and lands complete
    Given the database is down
    And the setting STAGE_CHUNK_BYTES is "20000"
    And the setting MESSAGE_MAX_BYTES is "65536"
    And workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.10,2.10" with tags "amenity,shop"
    And storing has failed at least twice
    Then no message in Redis is over 65536 bytes
    And no worker log line is over 2000 characters
    When the database comes back
    And all jobs are done
    Then the stand-in server received 1 call
    And the database holds exactly the POIs the stand-in server has for that job
    And every chunk was stored once, 2 chunks or more
    And no staged POIs are left
    And no job is dead-lettered
