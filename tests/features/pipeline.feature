Feature: The enrichment pipeline end to end
  App code sends enrich jobs; real Dramatiq workers on a real Redis broker
  call the stand-in Overpass server and upsert POIs into a real PostgreSQL.

  Background:
    Given the stand-in Overpass server is running
    And the POI table is empty

  @rabbitmq_fast
  Scenario: A job stores POIs
    Given workers are running
    When I enqueue an enrich job for box "48.85,2.29,48.86,2.30" with tags "amenity,shop=bakery"
    And all jobs are done
    Then the stand-in server received 1 call
    And the database holds exactly the POIs the stand-in server has for that job
    And no job is dead-lettered

  Scenario: The same job twice stores the POIs once
    Given workers are running
    When I enqueue an enrich job for box "48.85,2.29,48.86,2.30" with tags "amenity"
    And all jobs are done
    And I enqueue the same job again
    And all jobs are done
    Then the stand-in server received 2 calls
    And the database holds exactly the POIs the stand-in server has for that job

  Scenario Outline: An invalid job makes no Overpass call
    Given workers are running
    When I send enrich with <arguments>
    And all jobs are done
    Then the stand-in server received 0 calls
    And 1 job is dead-lettered with an error mentioning "<reason>"

    Examples:
      | arguments                                                                      | reason                  |
      | bbox {"south": 10, "west": 0, "north": 9, "east": 1}                           | must be below north     |
      | bbox {"south": 10, "west": 0, "north": 11, "east": 200}                        | outside [-180, 180]     |
      | bbox {"south": 0, "west": 0, "north": 5, "east": 5}                            | split it into smaller   |
      | tags ["", "shop"] in box {"south": 1, "west": 1, "north": 1.1, "east": 1.1}    | empty                   |
      | tags "amenity" in box {"south": 1, "west": 1, "north": 1.1, "east": 1.1}       | must be a list          |
      | bbox {"south": 1, "west": 1, "north": 2}                                       | missing: east           |
      | unexpected {"box": [1, 2, 3, 4]}                                               | unexpected: box         |

  Scenario: A tag cannot inject Overpass QL
    Given workers are running
    When I send enrich with tags ["amenity\"](1,2,3,4);out;//"] in box {"south": 1, "west": 1, "north": 1.1, "east": 1.1}
    And all jobs are done
    Then the stand-in server received 1 call
    And every query it received has exactly 1 statement, for the key amenity"](1,2,3,4);out;//
    And no job is dead-lettered

  @rabbitmq_fast
  Scenario: A 504 then success stores POIs after a retry
    Given the stand-in server will answer "504"
    And workers are running
    When I enqueue an enrich job for box "52.51,13.38,52.52,13.40" with tags "amenity"
    And all jobs are done
    Then the stand-in server received 2 calls
    And the database holds exactly the POIs the stand-in server has for that job
    And no job is dead-lettered

  Scenario: The database down after a fetch makes no second Overpass call
    Given the database is down
    And workers are running
    When I enqueue an enrich job for box "35.65,139.69,35.66,139.70" with tags "amenity,shop"
    And storing has failed at least twice
    And the database comes back
    And all jobs are done
    Then the stand-in server received 1 call
    And the database holds exactly the POIs the stand-in server has for that job
    And no job is dead-lettered
