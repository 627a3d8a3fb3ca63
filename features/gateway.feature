Feature: One entry point
  Clients talk to the gateway only. It routes to the services, checks tokens
  at the edge and refuses what it should. Run against gatehouse-gateway,
  gatehouse-auth and gatehouse-identity as three processes that find each
  other through the static registry.

  Background:
    Given the gateway, auth and identity services are running

  Scenario: Signing up, signing in and reading my profile through the gateway
    When "ann@example.org" registers through the gateway
    Then the answer is 201
    When "ann@example.org" signs in through the gateway
    Then the answer is 200
    And with that token my profile through the gateway shows "ann@example.org"

  Scenario: A protected route needs a token at the edge
    When my profile is read through the gateway without a token
    Then the answer is a 401 problem "token_missing"

  Scenario: A path trick meets the policy of the route it resolves to
    When "/v1/users/x/../me" is read through the gateway without a token
    Then the answer is a 401 problem "token_missing"

  Scenario: A path that climbs above the root is refused
    When "/v1/../../etc" is read through the gateway without a token
    Then the answer is a 400 problem "invalid_path"

  Scenario: An unknown route is a problem, not a guess
    When "/v1/nothing-here" is read through the gateway without a token
    Then the answer is a 404 problem "not_found"
