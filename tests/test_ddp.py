"""DDP distillation on CPU: two gloo ranks run the real loop (`train`) for a few steps of a tiny distillation; the
ranks' weights stay identical and log.jsonl records the ranks' average losses."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from tiny_runs import free_port

from ackd_fast import data
from ackd_fast import train as train_lib
from ackd_fast.assembly import Config
from ackd_fast.checkpoint import load_checkpoint
from ackd_fast.train import train

SIZE, CROP, STEPS, WORLD = 36, 32, 3, 2


def _rank(rank: int, port: int, cfg: Config) -> None:
    """One process of the run, as torchrun would start it; it records what only it knows (its own losses and
    weights) through the loop's own functions, which `train` looks up in its module at call time."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                   "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)}  # fmt: skip
    torch.set_num_threads(1)
    built, local = [], []
    build_task, train_step = train_lib.build_task, train_lib.train_step

    def recording_build_task(cfg, teacher=None, model=None):
        built.extend(build_task(cfg, teacher, model))
        return tuple(built)

    def recording_train_step(*args):
        out, d_loss = train_step(*args)
        local.append({"g_loss": out.loss.item(), "d_loss": d_loss.item(), **{k: v.item() for k, v in out.logs.items()}})
        return out, d_loss

    train_lib.build_task, train_lib.train_step = recording_build_task, recording_train_step
    train(cfg)
    objective, critic = built[0], built[1]
    trained = {k: v for k, v in objective.state_dict().items() if not k.startswith("teacher.")}
    torch.save({"g": trained, "d": critic.state_dict(), "losses": local}, f"{cfg.out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    root = str(data.build_sample_set(tmp_path_factory.mktemp("paired"), size=SIZE, train_per_photo=2, test_per_photo=2))
    out = tmp_path_factory.mktemp("teacher")
    train(_cfg(out, root, job="teacher", steps=1))
    return str(out / "ckpt.pt"), root


def _cfg(out, root, **kw):
    tiny = {"ngf": 4, "ndf": 8, "student_ngf": 4, "batch_size": 2, "workers": 0, "device": "cpu"}
    quiet = {"log_every": 1, "sample_every": 0, "progress": False}
    return Config(out_dir=str(out), dataroot=root, load_size=SIZE, crop_size=CROP, **(tiny | quiet | kw))


def test_two_gloo_ranks_keep_identical_weights_and_log_the_rank_average(tmp_path, teacher_and_data):
    teacher, root = teacher_and_data
    # --no-residual in "both" mode: every refiner parameter must still be used, or DDP (which does not search for
    # unused parameters) fails at the second step
    cfg = _cfg(tmp_path, root, job="distill", teacher=teacher, steps=STEPS, kv_stride=2, residual=False)
    mp.spawn(_rank, args=(free_port(), cfg), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for key in ("g", "d"):
        assert ranks[0][key].keys() == ranks[1][key].keys()
        for name, value in ranks[0][key].items():
            assert torch.equal(value, ranks[1][key][name]), f"{key}.{name} differs between the ranks"
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == STEPS and all(torch.equal(v, ckpt["g"][k]) for k, v in ranks[0]["g"].items())
    assert any(p.abs().sum() > 0 for k, p in ranks[0]["g"].items() if ".attention." in k)
    # each rank saw its own half of the data, so its losses differ; the log holds their mean, step by step
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    diagnostics = [r for r in records if "diag" in r]  # rank 0's, at the first and the last step
    records = [r for r in records if "g_loss" in r]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["step"] for r in diagnostics] == [1, STEPS] and "tap1/rel_dev" in diagnostics[0]["diag"]
    assert ranks[0]["losses"][0]["g_loss"] != ranks[1]["losses"][0]["g_loss"]
    for record, mine, theirs in zip(records, ranks[0]["losses"], ranks[1]["losses"], strict=True):
        for term in ("g_loss", "d_loss", "g_recon", "g_gan", "g_feat", "ack_path"):
            assert record[term] == pytest.approx((mine[term] + theirs[term]) / 2, rel=1e-6), term
