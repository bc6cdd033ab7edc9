"""CLEVR physics against the KALM authors' own episodes (docs/environment.md, "Fidelity against
the authors' episodes"): open-loop replays and one-step errors of kalm's env on the 80 expert
episodes of the authors' release, with the pusher contact weights kalm uses (the reference's)
and, with --before, also MuJoCo 3.3.0's own (what kalm used before).

  python scripts/clevr_fidelity.py [--episodes PATH] [--before] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kalm.envs.clevr.fidelity import load_episodes, measure, table

DEFAULT = (Path(__file__).resolve().parents[2]
           / "shared/reference/published/clevr-authors-episodes.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=Path, default=DEFAULT,
                        help="the authors' episodes as JSON (default: %(default)s)")
    parser.add_argument("--before", action="store_true",
                        help="also measure MuJoCo 3.3.0's own pusher contact weights")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if not args.episodes.exists():
        print(f"{args.episodes}: no such file (the authors' episodes as JSON)", file=sys.stderr)
        return 2
    episodes = load_episodes(args.episodes)
    rows = {}
    if args.before:
        rows["MuJoCo 3.3.0 pusher weights (before)"] = measure(episodes, match_reference=False)
    rows["reference pusher weights (kalm)"] = measure(episodes)
    if args.json:
        print(json.dumps({k: v.as_dict() for k, v in rows.items()}, indent=2))
    else:
        print(f"{len(episodes)} episodes, {rows[next(iter(rows))].transitions} transitions; "
              "errors = largest ball distance to the published state")
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
