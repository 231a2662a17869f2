"""Shared fixtures: real PostgreSQL and Redis on 127.0.0.1, and the simulators over HTTP."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.ifs_sim",
    "tests.fixtures.pipedrive_sim",
    "tests.fixtures.stack",
]
