"""d3rlpy algorithm configs with the paper's hyper-parameters as defaults (spec section 6)."""

from __future__ import annotations

from dataclasses import dataclass, field

ALGOS = ("bc", "cql", "bcq", "sac")


@dataclass
class AlgoConfig:
    algo: str = "cql"
    gamma: float = 0.99
    hidden_units: list[int] = field(default_factory=lambda: [256, 256])
    batch_size: int | None = None  # None: the paper's (BC 100, CQL 32, BCQ 32, SAC 64)
    learning_rate: float | None = None  # None: the paper's (BC 1e-3, CQL/BCQ 6.25e-5, SAC 3e-4)
    cql_alpha: float = 10.0
    bc_beta: float = 0.5
    target_update_interval: int = 8000
    device: str = "cpu:0"

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; expected one of {', '.join(ALGOS)}")


DEFAULT_BATCH = {"bc": 100, "cql": 32, "bcq": 32, "sac": 64}
DEFAULT_LR = {"bc": 1e-3, "cql": 6.25e-5, "bcq": 6.25e-5, "sac": 3e-4}


def create_algo(cfg: AlgoConfig):
    """A d3rlpy discrete-action algorithm built from the config."""
    import d3rlpy

    enc = d3rlpy.models.VectorEncoderFactory(hidden_units=list(cfg.hidden_units),
                                             activation="relu")
    batch = cfg.batch_size or DEFAULT_BATCH[cfg.algo]
    lr = cfg.learning_rate or DEFAULT_LR[cfg.algo]
    if cfg.algo == "bc":
        conf = d3rlpy.algos.DiscreteBCConfig(batch_size=batch, learning_rate=lr, beta=cfg.bc_beta,
                                             encoder_factory=enc)
    elif cfg.algo == "cql":
        conf = d3rlpy.algos.DiscreteCQLConfig(batch_size=batch, learning_rate=lr,
                                              alpha=cfg.cql_alpha, gamma=cfg.gamma,
                                              target_update_interval=cfg.target_update_interval,
                                              encoder_factory=enc)
    elif cfg.algo == "bcq":
        conf = d3rlpy.algos.DiscreteBCQConfig(batch_size=batch, learning_rate=lr,
                                              gamma=cfg.gamma,
                                              target_update_interval=cfg.target_update_interval,
                                              encoder_factory=enc)
    else:
        conf = d3rlpy.algos.DiscreteSACConfig(batch_size=batch, actor_learning_rate=lr,
                                              critic_learning_rate=lr, gamma=cfg.gamma,
                                              actor_encoder_factory=enc,
                                              critic_encoder_factory=enc)
    return conf.create(device=cfg.device)
