Feature: Coverage: no request is spent twice on data we hold or are fetching
  With the coverage ledger on, a job's box is cut into tiles of a global grid
  (ENRICH_TILE_DEG, 0.02 degrees). A tile fetched within ENRICH_FRESH_S is
  fresh: no call. A tile another job is fetching is claimed: the job ends as
  coalesced. A tile fetched again drops the POIs its new answer no longer
  holds, once the whole answer has landed.

  Background:
    Given the stand-in Overpass server is running
    And the POI table and the coverage ledger are empty
    And the setting ENRICH_COVERAGE is "true"

  Scenario: The same job twice in a row makes one call; the second is fresh
    Given workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And all jobs are done
    And I enqueue the same job again
    And all jobs are done
    Then the stand-in server received 1 call
    And 1 job ended as fresh
    And the database holds exactly the POIs the stand-in server has for that job
    And the ledger holds 4 tiles fetched with 1 call in all

  Scenario: Ten identical jobs sent at once make one call; nine are coalesced
    Given the stand-in server answers every call with latency 1000 ms
    And 2 worker processes with 8 threads are running
    When I enqueue 10 identical enrich jobs for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And all jobs are done
    Then the stand-in server received 1 call
    And 9 jobs ended as coalesced
    And the database holds exactly the POIs the stand-in server has for that job

  Scenario: force refetches fresh tiles
    Given workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And all jobs are done
    And I enqueue the same job again with force
    And all jobs are done
    Then the stand-in server received 2 calls
    And 0 jobs ended as fresh

  Scenario: A POI removed upstream between two fetches is removed from pois
    Given workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And all jobs are done
    And 3 POIs of that job are deleted upstream
    And I enqueue the same job again with force
    And all jobs are done
    Then the stand-in server received 2 calls
    And the 3 deleted POIs are not in the database
    And every other POI of that job is in the database
    And the workers counted 3 POIs deleted

  Scenario: A cut-off answer removes nothing
    Given the setting RETRY_MAX is "0"
    And workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And all jobs are done
    And 3 POIs of that job are deleted upstream
    And the stand-in server is set to answer "cutoff" next
    And I enqueue the same job again with force
    And all jobs are done
    Then the stand-in server received 2 calls
    And the 3 deleted POIs are still in the database
    And 1 job is dead-lettered with an error mentioning "cut off"

  Scenario: A leader deferred for longer than the claim TTL keeps its tiles
    Given the setting ENRICH_CLAIM_TTL_S is "2"
    And the setting RATE_LIMIT_PAUSE_S is "6"
    And the stand-in server will answer "429"
    And workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And the stand-in server has answered 1 call
    And 3 seconds pass
    And I enqueue the same job again
    And all jobs are done
    Then the stand-in server received 2 calls
    And 1 job ended as coalesced
    And the database holds exactly the POIs the stand-in server has for that job

  Scenario: A worker killed while holding a tile claim does not block the tile past the claim's expiry
    Given the setting ENRICH_CLAIM_TTL_S is "3"
    And the setting BROKER_HEARTBEAT_TIMEOUT_S is "120"
    And the stand-in server answers every call with latency 2500 ms
    And workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And a call is in flight at the stand-in server
    And the worker is killed
    And the tile claims have expired
    And new workers are running
    And I enqueue the same job again
    Then within 15 seconds the database holds exactly the POIs the stand-in server has for that job
    And no job ended as coalesced

  Scenario: A refresh asks only for what changed and applies creates, modifies and deletes
    Given the setting ENRICH_DIFF_MAX_AGE_S is "1000000000"
    And 1 POI of the job's box is missing upstream
    And workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And all jobs are done
    And upstream, as of "2025-01-02T08:00:00Z", the missing POI is added, 2 POIs are deleted and 1 loses its tag
    And I enqueue the same job again with force
    And all jobs are done
    Then the stand-in server received 2 calls
    And the last call asked for an augmented diff since "2025-01-01T21:21:00Z"
    And the database holds exactly what the stand-in server now has for that job
    And the workers counted 3 POIs deleted
    And the ledger holds 4 tiles as of "2025-01-02T08:00:00Z"

  Scenario: A server that refuses the diff gets one whole fetch instead
    Given the setting ENRICH_DIFF_MAX_AGE_S is "1000000000"
    And workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And all jobs are done
    And 3 POIs of that job are deleted upstream
    And the stand-in server is set to answer "400" next
    And I enqueue the same job again with force
    And all jobs are done
    Then the stand-in server received 3 calls
    And the last call asked for the tiles whole
    And the 3 deleted POIs are not in the database
    And no job is dead-lettered

  Scenario: Tiles fetched at different timestamps are refreshed whole, not by one diff since the oldest
    # An element created after the older timestamp, fetched into a newer tile, then deleted, is at
    # neither end of a diff since the older timestamp: such a diff kept it for ever.
    Given the setting ENRICH_DIFF_MAX_AGE_S is "1000000000"
    And 1 POI of box "48.025,2.00,48.04,2.04" is missing upstream
    And workers are running
    When I enqueue an enrich job for box "48.00,2.00,48.015,2.04" with tags "amenity"
    And all jobs are done
    And upstream, as of "2025-01-02T08:00:00Z", the missing POI is created
    And I enqueue an enrich job for box "48.025,2.00,48.04,2.04" with tags "amenity"
    And all jobs are done
    And upstream, as of "2025-01-03T08:00:00Z", the POI created is deleted again
    And I enqueue an enrich job for box "48.00,2.00,48.04,2.04" with tags "amenity"
    And I enqueue the same job again with force
    And all jobs are done
    Then the database holds exactly what the stand-in server now has for that job
    And the stand-in server received 3 calls
    And the last call fetched the tiles whole
