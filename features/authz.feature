Feature: Who may do what
  An admin gives people roles, and what a role allows opens to them at once;
  taking the role back closes it again. Run against the all-in-one gatehouse
  binary, the first admin made with its command line.

  Background:
    Given the whole platform is running
    And "root@example.org" was made an admin from the command line
    And "ann@example.org" has signed up through the gateway

  Scenario: A user without a role is refused the admin API, and told what is missing
    When "ann@example.org" lists the users through the gateway
    Then the answer is a 403 problem "forbidden"
    And the problem names the permission "users:read"

  Scenario: An admin grants a role, the user uses it, the grant is removed, the user is refused
    When the admin grants "ann@example.org" a role allowing "users:read"
    Then within a second "ann@example.org" can list the users through the gateway
    When the admin takes that grant back
    Then within a second "ann@example.org" is refused the users with a 403 problem "forbidden"

  Scenario: Built-in roles stay, and a bound role is deleted only with force
    When the admin grants "ann@example.org" a role allowing "users:read"
    And the admin deletes that role
    Then the answer is a 409 problem "role_bound"
    When the admin deletes the role "admin"
    Then the answer is a 409 problem "builtin_role"
    When the admin deletes that role with force
    Then the answer is 204
    And within a second "ann@example.org" is refused the users with a 403 problem "forbidden"
