"""Run the Pipedrive simulator on a port: `python -m simulators.pipedrive --port 8090`."""

from __future__ import annotations

import argparse

from simulators.pipedrive.app import serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    serve(args.port, host=args.host)


if __name__ == "__main__":
    main()
