Feature: The local run
  `make run` runs the Procfile with honcho from the virtualenv, on a Redis of
  its own and against the stand-in Overpass server, without anything to
  activate or configure; Ctrl-C lets the workers finish what they hold,
  then stops all of it.

  Scenario: make run stores a job, and Ctrl-C stops everything it started
    Given make run is started with 1 worker process
    When I run the commands it prints
    Then the job's POIs are stored
    When I press Ctrl-C
    Then everything make run started has stopped
    And the workers finished what they held rather than being killed
