Feature: Signing in
  People sign in with their email and password, stay signed in by
  refreshing, and sign out. Run against gatehouse-identity and gatehouse-auth
  as two separate processes that find each other through the static registry.

  Background:
    Given the identity and auth services are running

  Scenario: Signing in and reading my profile
    Given "ann@example.org" has registered
    When "ann@example.org" signs in with "correct horse battery staple"
    Then the answer is 200
    And the answer holds a bearer token pair
    And with that token my profile shows "ann@example.org"

  Scenario: A wrong password and an unknown email get the same answer
    Given "ann@example.org" has registered
    When "ann@example.org" signs in with "not my password at all"
    Then the answer is a 401 problem "invalid_credentials"
    When "bob@example.org" signs in with "correct horse battery staple"
    Then the answer is a 401 problem "invalid_credentials"

  Scenario: Refreshing replaces the pair
    Given "ann@example.org" has signed in
    When the latest refresh token is used
    Then the answer is 200
    And the answer holds a bearer token pair
    And with that token my profile shows "ann@example.org"

  Scenario: A refresh token used twice ends the session
    Given "ann@example.org" has signed in
    And the latest refresh token is used
    When the first refresh token is used again
    Then the answer is a 401 problem "refresh_token_reused"
    When the latest refresh token is used
    Then the answer is a 401 problem "invalid_refresh_token"

  Scenario: Signing out
    Given "ann@example.org" has signed in
    When "ann@example.org" signs out
    Then the answer is 204
    When the latest refresh token is used
    Then the answer is a 401 problem "invalid_refresh_token"

  Scenario: A tampered token is refused
    Given "ann@example.org" has signed in
    When my profile is read with the token changed in one place
    Then the answer is a 401 problem "token_bad_signature"
