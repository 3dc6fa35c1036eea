Feature: Fair shares between the sources of jobs
  One endpoint's calls are shared by every job the app sends. A user's map
  view sent behind a bulk import is not queued behind it: while jobs of
  several sources wait, each source gets calls in proportion to its weight,
  fleet-wide, whatever the order they were sent in.

  Background:
    Given the stand-in Overpass server is running
    And the POI table is empty

  Scenario: Map views sent behind a bulk import are among the first calls after they are sent
    Given the stand-in server answers every call with latency 100 ms
    And the setting SEMAPHORE_PERMITS is "1"
    And the setting ENRICH_SOURCE_WEIGHTS is "maps=4,import=1"
    And 2 worker processes with 4 threads are running
    When source "import" sends 30 jobs
    And the stand-in server has received 3 calls
    And source "maps" sends 4 jobs
    And every job of both sources is stored
    Then the 4 calls of source "maps" are among the first 7 calls after its send
    And each job was called once
    And no job is dead-lettered

  Scenario: A source over its cap waits for the next window; the others go on
    Given the setting QUOTA_REQUESTS is "1000"
    And the setting ENRICH_SOURCE_MAX_SHARE is "import=0.003"
    And 1 worker processes with 4 threads are running
    When source "import" sends 6 jobs
    And source "maps" sends 4 jobs
    Then 3 jobs of source "import" and every job of source "maps" are stored
    And 3 jobs of source "import" wait for the next window
    And the status shows source "import" with 3 calls this window (cap 3)
