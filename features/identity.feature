Feature: Identity
  People sign up with an email address and a password, prove the address is
  theirs, reset a forgotten password, and are slowed down after too many
  wrong guesses, never locked out. Run against the real gatehouse-identity
  binary.

  Background:
    Given the identity service is running

  Scenario: Registering a new account
    When "ann@example.org" registers with password "correct horse battery staple"
    Then the answer is 201
    And the answer shows the user "ann@example.org" without any password

  Scenario: An email address belongs to one account, whatever its case
    Given "ann@example.org" has registered
    When "ANN@Example.org" registers with password "another long passphrase"
    Then the answer is a 409 problem "email_taken"

  Scenario: A password under the policy is refused
    When "bob@example.org" registers with password "too short"
    Then the answer is a 422 problem "validation_failed"
    And "bob@example.org" cannot sign in with "too short"

  Scenario: Verifying an email address
    Given "ann@example.org" has registered
    When the link sent to "ann@example.org" to verify the address is followed
    Then the answer is 200
    And "ann@example.org" is verified

  Scenario: Resetting a forgotten password
    Given "ann@example.org" has registered
    When a password reset is requested for "ann@example.org"
    Then the answer is 202
    When the reset link for "ann@example.org" is used to set "a brand new passphrase"
    Then the answer is 204
    And "ann@example.org" can sign in with "a brand new passphrase"
    And "ann@example.org" cannot sign in with "correct horse battery staple"

  Scenario: A reset link works only once
    Given "ann@example.org" has registered
    And a password reset is requested for "ann@example.org"
    And the reset link for "ann@example.org" is used to set "a brand new passphrase"
    When the reset link for "ann@example.org" is used to set "yet another passphrase"
    Then the answer is a 400 problem "invalid_token"
    And "ann@example.org" can sign in with "a brand new passphrase"

  Scenario: Asking for a reset does not tell whether an account exists
    When a password reset is requested for "nobody@example.org"
    Then the answer is 202

  Scenario: Wrong passwords slow guessing down and never lock the owner out
    Given "ann@example.org" has registered
    And "ann@example.org" has signed in on her device
    When someone guesses a wrong password for "ann@example.org" until told to wait
    Then signing in as "ann@example.org" with "correct horse battery staple" is refused as "too_many_attempts"
    And "ann@example.org" can sign in with "correct horse battery staple" on her device