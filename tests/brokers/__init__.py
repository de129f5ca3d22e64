"""One module per broker adapter: ``ENV`` names the variable holding its test URL, and an
optional ``container()`` starts the broker with testcontainers where Docker is available."""
