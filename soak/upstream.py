"""`python -m soak.upstream --record FILE`: the soak's upstream in a process of its own.

Prints its port on the first line of stdout, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal

from tests.live.fake_upstream import SoakUpstream


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m soak.upstream")
    parser.add_argument("--record", required=True, help="the JSON-lines file of every call")
    args = parser.parse_args()
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # before any thread: only sigwait gets them
    upstream = SoakUpstream(args.record)
    print(upstream.port, flush=True)
    signal.sigwait(stops)
    upstream.close()


if __name__ == "__main__":
    main()
