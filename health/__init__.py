"""The health engine: component states, the checks that decide them, and the service."""
