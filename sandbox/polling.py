"""`wait_until` for the assembly's users: its one home is connector.polling (the CLI uses it
too, and the CLI must not depend on this test and demo assembly)."""

from connector.polling import wait_until

__all__ = ["wait_until"]
