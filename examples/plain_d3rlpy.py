"""Behaviour cloning with plain d3rlpy on a file from `kalm export --format d3rlpy`.

    python examples/plain_d3rlpy.py DATA OUT [--steps N]

DATA must be exported with `--with-instruction-embedding` for the policy to be evaluated by
kalm: kalm's policies see the state followed by the embedding of the instruction. Only d3rlpy
is used here; the policy is saved as OUT/policy.d3, and DATA.json is copied as
OUT/train_config.json, from which `kalm evaluate --policy OUT` learns the env, the state size
and the text encoder (docs/datasets.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import d3rlpy
import numpy as np
from d3rlpy.dataset import Episode, InfiniteBuffer, ReplayBuffer
from d3rlpy.dataset.io import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="d3rlpy file written by kalm export --format d3rlpy")
    parser.add_argument("out", help="policy folder")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    info = json.loads(Path(args.data + ".json").read_text())
    if not info["with_instruction_embedding"]:
        parser.error(f"{args.data} holds states only; export it with "
                     "--with-instruction-embedding for kalm evaluate")
    with open(args.data, "rb") as f:
        episodes = load(Episode, f)
    discrete = info["action_type"] == "discrete"
    # action space and size named, not guessed from the data (a discrete action that never
    # occurs would shrink the policy's output)
    dataset = ReplayBuffer(
        InfiniteBuffer(), episodes=episodes, action_size=info["action_dim"],
        action_space=d3rlpy.ActionSpace.DISCRETE if discrete else d3rlpy.ActionSpace.CONTINUOUS)

    d3rlpy.seed(args.seed)
    encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=[256, 256])
    if discrete:
        config = d3rlpy.algos.DiscreteBCConfig(batch_size=256, learning_rate=1e-3,
                                               encoder_factory=encoder)
    else:
        scaler = d3rlpy.preprocessing.MinMaxActionScaler(
            minimum=np.asarray(info["action_low"]), maximum=np.asarray(info["action_high"]))
        config = d3rlpy.algos.BCConfig(batch_size=256, learning_rate=1e-3,
                                       encoder_factory=encoder, action_scaler=scaler)
    algo = config.create(device="cpu:0")
    algo.fit(dataset, n_steps=args.steps, n_steps_per_epoch=min(args.steps, 5_000),
             show_progress=False, logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    algo.save(str(out / "policy.d3"))
    shutil.copy(args.data + ".json", out / "train_config.json")
    print(f"saved {out / 'policy.d3'}; evaluate with: kalm evaluate --policy {out}")


if __name__ == "__main__":
    main()
