"""d3rlpy algorithm configs with the paper's hyper-parameters as defaults (spec section 6;
continuous actions: metaworld-spec 4.10).

The same name can mean two algorithms: `bc` and `cql` are the discrete versions on data with
discrete actions and the continuous ones on continuous data, because the data decides what a
policy can output. `bcq` and `sac` exist here only for discrete actions, `td3bc` and `iql` only
for continuous ones; asking for one on the other kind of data is an error naming both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DISCRETE_ALGOS = ("bc", "cql", "bcq", "sac")
CONTINUOUS_ALGOS = ("bc", "cql", "td3bc", "iql")
ALGOS = ("bc", "cql", "bcq", "sac", "td3bc", "iql")


@dataclass
class AlgoConfig:
    algo: str = "cql"
    gamma: float = 0.99
    hidden_units: list[int] = field(default_factory=lambda: [256, 256])
    # None: the paper's (discrete BC 100, CQL 32, BCQ 32, SAC 64; continuous BC 100, TD3+BC,
    # IQL and CQL 256)
    batch_size: int | None = None
    # None: the paper's (discrete BC 1e-3, CQL/BCQ 6.25e-5, SAC 3e-4; continuous BC 1e-3,
    # TD3+BC 3e-4, IQL and CQL d3rlpy's); for actor-critic algorithms it sets both
    learning_rate: float | None = None
    cql_alpha: float = 10.0  # CQL's conservative weight (continuous: conservative_weight)
    bc_beta: float = 0.5
    # hard target-network syncs of discrete CQL, BCQ and SAC, every this many gradient steps;
    # None: the training run's steps / TARGET_SYNCS. d3rlpy's 8,000 (the paper's) is meant for
    # runs of 100k+ steps: at kalm's 8,000 CQL steps it synced once, after the first step, so
    # every earlier CQL policy bootstrapped from a near-initial network (docs/results.md)
    target_update_interval: int | None = None
    td3bc_alpha: float = 2.5  # KALM's code and d3rlpy's default; the paper's Table 3 says 0.5
    cql_action_samples: int = 10  # continuous CQL: d3rlpy's default; 4 is ~2x faster
    device: str = "cpu:0"

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; expected one of {', '.join(ALGOS)}")

    def identity(self) -> dict[str, Any]:
        """The settings that decide a trained policy, for folder manifests. Settings added with
        the continuous algorithms are left out at their defaults, so policies trained before
        they existed keep their identity (and are not retrained)."""
        out = asdict(self)
        for key, default in _LATER_DEFAULTS.items():
            if out.get(key) == default:
                del out[key]
        return out


_LATER_DEFAULTS = {"td3bc_alpha": 2.5, "cql_action_samples": 10}


# target syncs per training run when target_update_interval is None, and the fewest a run may
# have at all: with fewer the critic bootstraps from a network that stays near its
# initialisation for most of the run. 8 was chosen on the dev half over 40 (CQL, 8,000 steps,
# 3 seeds: higher on 4 of 5 real-only/KALM cells, e.g. KALM rephrase 24.3 vs 21.1;
# docs/experiments/13-honest-numbers.md)
TARGET_SYNCS = 8
MIN_TARGET_SYNCS = 4
# the algorithms with a hard-synced target network (the continuous ones use soft updates)
HARD_TARGET_ALGOS = ("cql", "bcq", "sac")


def target_interval(cfg: AlgoConfig, steps: int) -> int:
    """The target network's sync interval for a run of STEPS gradient steps."""
    if cfg.target_update_interval is None:
        return max(1, steps // TARGET_SYNCS)
    return cfg.target_update_interval


def check_target_interval(cfg: AlgoConfig, steps: int, action_type: str = "discrete") -> None:
    """Refuse an interval that syncs the target network fewer than MIN_TARGET_SYNCS times in
    the run, before any training."""
    if action_type != "discrete" or cfg.algo not in HARD_TARGET_ALGOS:
        return
    interval = target_interval(cfg, steps)
    if interval < 1:
        raise ValueError(f"algo.target_update_interval: expected >= 1, got {interval}")
    if steps >= MIN_TARGET_SYNCS and steps // interval < MIN_TARGET_SYNCS:
        raise ValueError(
            f"algo.target_update_interval {interval} syncs {cfg.algo}'s target network "
            f"{steps // interval} time(s) in {steps} steps (fewer than {MIN_TARGET_SYNCS}): the "
            f"critic would bootstrap from a network that barely moves; set it to at most "
            f"{steps // MIN_TARGET_SYNCS}, or leave it unset (steps / {TARGET_SYNCS})")


DEFAULT_BATCH = {"bc": 100, "cql": 32, "bcq": 32, "sac": 64}
DEFAULT_LR = {"bc": 1e-3, "cql": 6.25e-5, "bcq": 6.25e-5, "sac": 3e-4}
CONTINUOUS_BATCH = {"bc": 100, "cql": 256, "td3bc": 256, "iql": 256}
CONTINUOUS_LR = {"bc": 1e-3, "td3bc": 3e-4}  # IQL and CQL: d3rlpy's own defaults


def check_algo(algo: str, action_type: str, env: str | None = None) -> None:
    """Refuse an algorithm that cannot act in the data's action space, before any work."""
    known = CONTINUOUS_ALGOS if action_type == "continuous" else DISCRETE_ALGOS
    if algo not in known:
        where = f"env {env!r} has" if env else "the data has"
        raise ValueError(f"algo {algo!r} is not available for {action_type} actions ({where} "
                         f"{action_type} actions); use one of {', '.join(known)}")


def create_algo(cfg: AlgoConfig, action_type: str = "discrete", action_scaler=None,
                steps: int | None = None):
    """A d3rlpy algorithm built from the config, for the data's action type. `action_scaler`
    (continuous only) maps the env's action bounds to the policy's [-1, 1], so the policy can
    only predict actions inside them. STEPS, the run's length, sets the target network's sync
    interval when the config leaves it unset (required then for discrete CQL, BCQ and SAC)."""
    import d3rlpy

    check_algo(cfg.algo, action_type)
    interval = cfg.target_update_interval
    if action_type == "discrete" and cfg.algo in HARD_TARGET_ALGOS:
        if interval is None and steps is None:
            raise ValueError(f"{cfg.algo}: target_update_interval is unset and the run's steps "
                             "are unknown; pass steps=")
        if steps is not None:
            check_target_interval(cfg, steps, action_type)
            interval = target_interval(cfg, steps)
    enc = d3rlpy.models.VectorEncoderFactory(hidden_units=list(cfg.hidden_units),
                                             activation="relu")
    if action_type == "continuous":
        return _create_continuous(cfg, enc, action_scaler)
    batch = cfg.batch_size or DEFAULT_BATCH[cfg.algo]
    lr = cfg.learning_rate or DEFAULT_LR[cfg.algo]
    if cfg.algo == "bc":
        conf = d3rlpy.algos.DiscreteBCConfig(batch_size=batch, learning_rate=lr, beta=cfg.bc_beta,
                                             encoder_factory=enc)
    elif cfg.algo == "cql":
        conf = d3rlpy.algos.DiscreteCQLConfig(batch_size=batch, learning_rate=lr,
                                              alpha=cfg.cql_alpha, gamma=cfg.gamma,
                                              target_update_interval=interval,
                                              encoder_factory=enc)
    elif cfg.algo == "bcq":
        conf = d3rlpy.algos.DiscreteBCQConfig(batch_size=batch, learning_rate=lr,
                                              gamma=cfg.gamma,
                                              target_update_interval=interval,
                                              encoder_factory=enc)
    else:
        conf = d3rlpy.algos.DiscreteSACConfig(batch_size=batch, actor_learning_rate=lr,
                                              critic_learning_rate=lr, gamma=cfg.gamma,
                                              target_update_interval=interval,
                                              actor_encoder_factory=enc,
                                              critic_encoder_factory=enc)
    return conf.create(device=cfg.device)


def _create_continuous(cfg: AlgoConfig, enc, action_scaler):
    import d3rlpy

    batch = cfg.batch_size or CONTINUOUS_BATCH[cfg.algo]
    lr = cfg.learning_rate or CONTINUOUS_LR.get(cfg.algo)
    # actor and critic learning rates only when chosen: otherwise d3rlpy's defaults stand
    rates = {} if lr is None else {"actor_learning_rate": lr, "critic_learning_rate": lr}
    common = {"batch_size": batch, "action_scaler": action_scaler}
    if cfg.algo == "bc":
        conf = d3rlpy.algos.BCConfig(learning_rate=lr, encoder_factory=enc, **common)
    elif cfg.algo == "td3bc":
        conf = d3rlpy.algos.TD3PlusBCConfig(alpha=cfg.td3bc_alpha, gamma=cfg.gamma,
                                            actor_encoder_factory=enc,
                                            critic_encoder_factory=enc, **rates, **common)
    elif cfg.algo == "iql":
        conf = d3rlpy.algos.IQLConfig(gamma=cfg.gamma, actor_encoder_factory=enc,
                                      critic_encoder_factory=enc, value_encoder_factory=enc,
                                      **rates, **common)
    else:
        conf = d3rlpy.algos.CQLConfig(conservative_weight=cfg.cql_alpha, gamma=cfg.gamma,
                                      n_action_samples=cfg.cql_action_samples,
                                      actor_encoder_factory=enc, critic_encoder_factory=enc,
                                      **rates, **common)
    return conf.create(device=cfg.device)
