"""cronbox test suite."""
