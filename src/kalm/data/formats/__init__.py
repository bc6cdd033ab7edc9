"""Episode files in and out of other formats (`kalm export`, `kalm import`).

- `minari_io`: Minari datasets (minari 0.5), both ways, without loss;
- `published`: the padded layouts of KALM's and ImagineBench's released data, in only.

The d3rlpy export lives with the RL code (`kalm.rl.export`), since it can add the policy's
instruction embedding. See docs/datasets.md.
"""
