"""`make bench`: every benchmark at the size its BENCHMARKS.md row was measured with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RUNS = [
    ["env_speed.py", "--steps", "5000", "--repeats", "5"],
    ["expert_success.py", "--episodes", "1000"],
    ["collect_speed.py", "--episodes", "10000", "--workers", "2"],
    ["metaworld_bench.py", "step", "--steps", "2000", "--repeats", "3"],
    ["metaworld_bench.py", "expert", "--episodes", "40", "--workers", "2"],
    ["eval_speed.py", "--workdir", "/tmp/kalm-eval-speed", "--episodes", "100",
     "--vector-envs", "8", "16", "32", "--budget", "100", "300"],
]


def main() -> None:
    for cmd in RUNS:
        print(f"\n$ python benchmarks/{' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], check=True)


if __name__ == "__main__":
    main()
