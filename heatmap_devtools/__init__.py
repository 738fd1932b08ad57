"""Tools for a laptop and for tests, not for production: local Kafka and S3
launchers, the synthetic fleet, the load generator and the demo. They reach
the services only over the network and import no deployable."""
