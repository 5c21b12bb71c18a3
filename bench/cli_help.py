"""Wall time of `plankton --help` (goal <= 0.3 s), next to a bare `python -c pass` as the reference.

    python bench/cli_help.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def best(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    python = best([sys.executable, "-c", "pass"], args.repeat)
    for argv in (["--help"], ["ingest", "--help"], ["info", "--help"]):
        t = best([sys.executable, "-m", "plankton_cli", *argv], args.repeat)
        print(f"plankton {' '.join(argv):15s} {t * 1000:6.0f} ms  ({t / python:.1f}x a bare python start of "
              f"{python * 1000:.0f} ms){'  OVER 0.3 s' if t > 0.3 else ''}")


if __name__ == "__main__":
    main()
