import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests' models are tiny: one thread is faster than two (thread hand-offs dominate), and on
# a busy 2-core machine several times faster. Set before torch is imported, so the `kalm`
# subprocesses the tests start inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """OMP_NUM_THREADS may have been set by the caller; the tests run on one thread anyway."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def expert_episode():
    """A real CLEVR expert episode reaching test_dynamics.GOAL (red left of blue) in a few
    pushes: the ground truth that relabelling and labelling tests build imagined rollouts on."""
    from kalm.data.rollout import run_episode
    from kalm.envs.registry import get_env, make_env

    clevr = get_env("clevr")
    goal = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}
    env = make_env(clevr, "paper")
    for seed in range(20):
        ep = run_episode(env, clevr.policy("expert"), goal, "Put red left of blue.", seed)
        if ep.success and 2 <= ep.length <= 8:
            return ep
    pytest.skip("no short expert episode found")
