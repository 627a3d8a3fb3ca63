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

  Scenario: The API document describes what lies behind the gateway
    When the API document is read through the gateway
    Then the answer is 200
    And the document is OpenAPI "3.1.0" with "post" on "/v1/auth/login" and "get" on "/v1/users/me"

  Scenario: A burst from one address is slowed down with a clear answer
    When 60 requests for "/v1/auth/keys" are sent at once through the gateway
    Then some answers are 429 problems "rate_limited" with Retry-After and RateLimit headers
