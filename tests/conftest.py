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


@pytest.fixture
def interrupted_training(tmp_path, monkeypatch):
    """`kalm train` twice on the same data: uninterrupted into `whole`, and crashed at the 16th
    batch (last checkpoint: step 10) then resumed into `split`; returns the two policy files
    for the caller to compare. The crash, the resume's 20 remaining steps and the last log line
    are checked here for every algorithm alike."""
    import json

    from click.testing import CliRunner

    from kalm.cli import main
    from kalm.rl.datasets import TransitionSampler as Sampler

    def run(algo, real, config):
        def train(out, *extra):
            return CliRunner().invoke(main, [
                "train", "--algo", algo, "--real", str(real), "--steps", "30",
                "--save-every", "10", "--seed", "3", "--config", str(config), "--out",
                str(tmp_path / out), *extra])

        r = train("whole")
        assert r.exit_code == 0, r.output
        real_sample = Sampler.sample
        calls = {"n": 0}

        def crash_at_step_16(self, batch_size):
            calls["n"] += 1
            if calls["n"] == 16:
                raise RuntimeError("simulated crash")
            return real_sample(self, batch_size)

        monkeypatch.setattr(Sampler, "sample", crash_at_step_16)
        r = train("split")
        assert isinstance(r.exception, RuntimeError)
        assert not (tmp_path / "split/policy.d3").exists()
        monkeypatch.setattr(Sampler, "sample", real_sample)
        r = train("split", "--resume")
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / "split/train_summary.json").read_text())[
            "steps_this_run"] == 20
        resumed_log = (tmp_path / "split/logs/train.jsonl").read_text().splitlines()
        whole_log = (tmp_path / "whole/logs/train.jsonl").read_text().splitlines()
        assert resumed_log[-1] == whole_log[-1]
        return tmp_path / "whole/policy.d3", tmp_path / "split/policy.d3"

    return run
