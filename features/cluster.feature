@cluster @serial
Feature: A replicated deployment
  Two gateways, two auth, two identity, two authz and one audit run as
  separate processes on PostgreSQL, Redis, a Kafka-protocol broker and etcd,
  each instance listed in etcd under a lease of two seconds. Clients keep
  using the platform while its parts are killed and restarted; as behind a
  load balancer, a client whose gateway refuses the connection goes to the
  other. Run only by the it-cluster profile, which runs every other feature
  against the same deployment.

  Background:
    Given the replicated deployment is running

  Scenario Outline: An instance killed under load costs only the requests in flight on it
    Given clients keep signing in, reading and refreshing through both gateways
    When the first <service> instance is killed
    Then it is gone from discovery within its lease
    When it is started again
    Then it is back in discovery
    And it serves the clients again
    And only requests in flight on it when it was killed failed

    Examples:
      | service  |
      | identity |
      | auth     |
      | authz    |

  Scenario: The audit instance killed while people sign up misses none of their events
    Given people keep signing up through both gateways
    When the audit instance is killed
    Then it is gone from discovery within its lease
    When it is started again
    Then it is back in discovery
    And every sign-up succeeded
    And within 30 seconds the audit log holds the sign-up of everyone who signed up

  @broker
  Scenario: The broker restarted while people sign up
    Given people keep signing up through both gateways
    When the broker is killed
    And it is started again
    Then every sign-up succeeded
    And within 30 seconds the audit log holds the sign-up of everyone who signed up

  Scenario: A gateway replica restarted while the other carries the traffic
    Given clients keep signing in, reading and refreshing through the second gateway
    When the first gateway is stopped
    Then it left discovery as it stopped
    When it is started again
    Then it is back in discovery
    And none of the clients' requests failed
    And the first gateway serves sign-ins again
