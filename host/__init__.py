"""The cronbox host: store, service, settlement, sweep, pool, runtimes, delivery, CLI."""
