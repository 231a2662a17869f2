"""A whole connector wired to the simulators on this machine: for tests, benchmarks and the demo."""
