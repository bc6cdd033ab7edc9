"""Diagnostics on a finished `kalm run` folder (docs/results.md section 10). Both read the run
and write elsewhere; neither changes the run, so its stages stay up to date.

  python scripts/diagnose_run.py relabel RUN OUT
      each level's label stage again, same config, into OUT/label-LEVEL: for runs labelled
      before the label stage replayed the kept (cut) actions, the labeller's precision on them
  python scripts/diagnose_run.py first-proposals RUN OUT
      the first proposal of every task of a best-of-N run's imagined files, OUT/n1-LEVEL.h5:
      the N = 1 rollouts, for `kalm signals`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kalm.data.episodes import EpisodeData, read_episodes, write_episodes
from kalm.envs.registry import get_env
from kalm.imagination.dynamics import DynamicsEnsemble
from kalm.imagination.labelling import label_level
from kalm.run_folder import imagine_stage, load_run


def relabel(run: Path, out: Path) -> None:
    cfg = load_run(run)
    dynamics = DynamicsEnsemble.load(run / "dynamics")
    for level in cfg.imagine.levels:
        stats = label_level(run / imagine_stage(level) / "imagined.h5", out / f"label-{level}",
                            cfg.label, get_env(cfg.env), dynamics)
        d = stats["diagnostic"]
        print(f"{level}: kept {stats['judged_successful']} of {stats['kept']['all']} tasks, "
              f"right on replay of the kept actions {d['replayed_successful_of_kept']}; "
              f"labeller {json.dumps(d['labeller'])}")


def first_proposals(run: Path, out: Path) -> None:
    cfg = load_run(run)
    out.mkdir(parents=True, exist_ok=True)
    for level in cfg.imagine.levels:
        data = read_episodes(run / imagine_stage(level) / "imagined.h5")
        first = [e for e in data.episodes() if int(e.extras.get("proposal", 0)) == 0]
        write_episodes(EpisodeData.from_episodes(first, data.spec, source="imagined",
                                                 attrs=data.attrs), out / f"n1-{level}.h5")
        print(f"{level}: {len(first)} of {len(data)} rollouts -> {out / f'n1-{level}.h5'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["relabel", "first-proposals"])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    {"relabel": relabel, "first-proposals": first_proposals}[args.what](args.run, args.out)


if __name__ == "__main__":
    main()
