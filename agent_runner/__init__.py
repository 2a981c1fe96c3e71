"""The agent runner: runs inside a session container and drives the agent provider."""
