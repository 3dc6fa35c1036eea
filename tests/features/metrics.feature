Feature: Prometheus metrics of the workers
  Operators see why each job ended, on the workers' one exposition endpoint,
  summed over every worker process of the dramatiq CLI.

  Background:
    Given the stand-in Overpass server is running
    And the POI table is empty

  Scenario: Two worker processes report exactly the outcomes of their jobs
    Given the setting SEMAPHORE_WAIT_S is "5"
    And the stand-in server will answer "504, 429, timeout-remark, 400"
    And 2 worker processes with 4 threads are running
    When I enqueue an enrich job for box "48.85,2.29,48.89,2.33" with tags "amenity"
    And I enqueue an enrich job for box "52.51,13.38,52.55,13.42" with tags "amenity"
    And I enqueue an enrich job for box "35.65,139.69,35.69,139.73" with tags "amenity,shop"
    And I enqueue an enrich job for box "40.75,-73.99,40.79,-73.95" with tags "shop"
    And I send enrich with bbox {"south": 10, "west": 0, "north": 9, "east": 1}
    And all jobs are done
    Then the metrics endpoint shows exactly these job outcomes
      | actor      | outcome         | final | count |
      | enrich     | invalid_request | true  | 1     |
      | fetch_pois | upstream_error  | false | 1     |
      | fetch_pois | rate_limited    | false | 1     |
      | fetch_pois | split           | true  | 1     |
      | fetch_pois | rejected        | true  | 1     |
      | fetch_pois | success         | true  | 6     |
    And the metrics endpoint shows exactly these Overpass calls
      | status        | count |
      | ok            | 6     |
      | server_busy   | 1     |
      | rate_limited  | 1     |
      | query_timeout | 1     |
      | bad_query     | 1     |
    And the stock Dramatiq metrics count each retry once
      | actor      | messages | errors | retries | rejects |
      | enrich     | 5        | 1      | 0       | 1       |
      | fetch_pois | 10       | 2      | 1       | 1       |
    And no message is in progress or held delayed
    And the POIs upserted and response bytes are what the stand-in server sent
    And the fleet gauges show the breaker closed and the quota charged 10 requests and every byte received
