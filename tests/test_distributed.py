"""Data-parallel training on the CPU (gloo): two processes take the steps one process takes with the same global
batch; BatchNorm statistics are the global batch's; a killed two-process run resumes to where it would have ended."""
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio.distributed import SyncBatchNorm, World, convert_batchnorms, global_batches, shard
from mrconv_audio.train import TrainConfig, train
from speech_tree import make_speech_commands

# Per-branch BatchNorms (branch_norm=batchnorm) so that every kind of BatchNorm in the model is synchronized.
TINY = {"d_model": 8, "depth": 1, "branch_norm": "batchnorm", "dropout": 0.0}


def test_every_clip_of_a_global_batch_goes_to_exactly_one_process():
    order = np.random.default_rng(0).permutation(23)
    for size in (1, 2, 3, 5):
        batches = global_batches(order, 5, size)
        for batch in batches:
            parts = [batch[shard(batch, World(rank, size))] for rank in range(size)]
            assert np.array_equal(np.concatenate(parts), batch)  # in order, none twice, none left out
            assert max(map(len, parts)) - min(map(len, parts)) <= 1 and min(map(len, parts)) >= 1
        # 23 = 4 x 5 + 3: the last batch of 3 is kept unless a process would get none.
        assert [len(b) for b in batches] == ([5] * 4 + [3] if size <= 3 else [5] * 4)


# ---- SyncBatchNorm against BatchNorm1d over the whole batch -----------------------------------------------------------
def _sync_bn_worker(rank: int, folder: str, rows: list[int]) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    torch.manual_seed(0)
    x, probe = torch.randn(8, 3, 50) * 2 + 5, torch.randn(8, 3, 50)  # the same on both processes
    norm = SyncBatchNorm(3).train()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.normal_()
    mine = slice(0, rows[0]) if rank == 0 else slice(rows[0], 8)
    x_mine = x[mine].clone().requires_grad_()
    y = norm(x_mine)
    (y * probe[mine]).sum().backward()
    for p in (norm.weight, norm.bias):  # as DistributedDataParallel would: gradients summed over processes
        torch.distributed.all_reduce(p.grad)
    result = {"y": y, "x_grad": x_mine.grad, "weight_grad": norm.weight.grad, "bias_grad": norm.bias.grad,
              "running_mean": norm.running_mean, "running_var": norm.running_var}
    np.savez(f"{folder}/rank{rank}.npz", **{k: v.detach().numpy() for k, v in result.items()})
    torch.distributed.destroy_process_group()


# spawn, not fork: a forked child inherits locks held by other threads of this process (earlier tests start
# threads; the full suite hung here in a forked worker).
START = "spawn"


@pytest.mark.parametrize("rows", [[4], [3]], ids=["even", "uneven"])
def test_sync_batchnorm_equals_batchnorm_over_the_global_batch(tmp_path, rows):
    mp.start_processes(_sync_bn_worker, args=(str(tmp_path), rows), nprocs=2, start_method=START)
    got = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]

    torch.manual_seed(0)
    x, probe = torch.randn(8, 3, 50) * 2 + 5, torch.randn(8, 3, 50)
    reference = torch.nn.BatchNorm1d(3).train()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2)
        reference.bias.normal_()
    x.requires_grad_()
    y = reference(x)
    (y * probe).sum().backward()
    check = lambda a, b: np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-5)
    check(np.concatenate([got[0]["y"], got[1]["y"]]), y)
    check(np.concatenate([got[0]["x_grad"], got[1]["x_grad"]]), x.grad)
    for r in range(2):
        check(got[r]["weight_grad"], reference.weight.grad)
        check(got[r]["bias_grad"], reference.bias.grad)
        check(got[r]["running_mean"], reference.running_mean)
        check(got[r]["running_var"], reference.running_var)


def test_every_batchnorm_of_the_model_is_converted_and_alone_it_is_plain_batchnorm():
    cfg = MRConvConfig.preset("small", labels=["a", "b", "c"], **{**TINY, "depth": 2})
    model = MRConvClassifier(cfg).train()
    plain = sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    assert plain == 2 * (1 + len(model.blocks[0].conv.lengths))  # block norm + one per branch, per block
    keys = list(model.state_dict())
    x = torch.randn(4, cfg.sample_rate) * 0.1
    torch.manual_seed(1)
    before = model(x)
    convert_batchnorms(model)
    assert sum(type(m) is SyncBatchNorm for m in model.modules()) == plain
    assert list(model.state_dict()) == keys  # checkpoints are unchanged
    torch.manual_seed(1)
    torch.testing.assert_close(model(x), before)


# ---- whole training runs --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_speech_commands(tmp_path_factory.mktemp("data") / "sc", speakers=8)


def launch(tree, out, cache, processes, *extra):
    """The CLI's train command under torchrun (gloo, this machine)."""
    overrides = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m",
            "mrconv_audio.cli", "train", "--preset", "small", "--task", "kws12", "--data-root", str(tree),
            "--out", str(out), "--epochs", "2", "--batch-size", "5", "--lr", "0.02", "--warmup-epochs", "0.2",
            "--sample-rate", "4000", "--cache-dir", str(cache), "--seed", "3", "--device", "cpu", *overrides, *extra]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def model_weights(run) -> dict:
    return {k: v for k, v in load_file(run / "state.safetensors").items() if k.startswith("model.")}


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(tree, tmp_path):
    # One process, in this one: 78 clips, batches of 5 (the last of 3), augmentation on, class-weighted loss.
    cfg = TrainConfig(data_root=str(tree), out=str(tmp_path / "one"), preset="small", task="kws12", epochs=2,
                      batch_size=5, lr=0.02, warmup_epochs=0.2, sample_rate=4000, cache_dir=str(tmp_path / "cache"),
                      seed=3, device="cpu", model_overrides=TINY)
    train(cfg, log=lambda *a: None)
    # Two processes: 3 + 2 clips of every batch (2 + 1 of the last); BatchNorm statistics over all 5.
    two = subprocess.run(launch(tree, tmp_path / "two", tmp_path / "cache", 2), env=ENV, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "over 2 process(es)" in two.stdout and two.stdout.count("training small on kws12") == 1  # one logs

    one, both = model_weights(tmp_path / "one"), model_weights(tmp_path / "two")
    assert one.keys() == both.keys() and any("conv.norms.0.running_var" in k for k in one)
    # float32 rounding (sums taken in another order) grows over 32 AdamW steps to ~1e-4; the float64 test below
    # shows the steps themselves equal to 1e-14. Without synchronized BatchNorm the weights differ by ~1e-2.
    for key in one:
        torch.testing.assert_close(both[key], one[key], rtol=2e-3, atol=1e-3, msg=key)
    metrics = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("one", "two")]
    assert [m["epoch"] for m in metrics[1]] == [1, 2]  # written once, by the first process
    for a, b in zip(*metrics):
        assert a["clips"] == b["clips"] == 78
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["train_accuracy"] == a["train_accuracy"] and b["val_accuracy"] == a["val_accuracy"]
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["processes"] == 2


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in descendants(c)]


def kill_everything(launcher: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it at once (torchrun puts its workers in sessions of their own,
    so a process-group kill would leave them running), and wait until they are gone."""
    workers = descendants(launcher.pid)
    assert len(workers) >= 2, workers
    handles = [os.pidfd_open(pid) for pid in workers]
    for pid in [launcher.pid, *workers]:
        os.kill(pid, signal.SIGKILL)
    launcher.wait(timeout=120)
    for handle in handles:  # readable once the process has exited
        assert select.select([handle], [], [], 120)[0], "a worker survived SIGKILL"
        os.close(handle)


def test_a_killed_two_process_run_resumes_to_where_it_would_have_ended(tree, tmp_path):
    cache, dropout = tmp_path / "cache", ["--set", "dropout=0.2"]  # each process's dropout masks must resume too
    reference = subprocess.run(launch(tree, tmp_path / "ref", cache, 2, *dropout), env=ENV, capture_output=True,
                               text=True)
    assert reference.returncode == 0, reference.stderr[-3000:]

    # The same run, every process killed at once inside epoch 2.
    run = tmp_path / "run"
    proc = subprocess.Popen(launch(tree, run, cache, 2, *dropout, "--checkpoint-every", "4"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "checkpoint saved: epoch 2 step 4" in line:
            kill_everything(proc)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # it died inside epoch 2

    resumed = subprocess.run(launch(tree, run, cache, 2, *dropout, "--resume"), env=ENV, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "epoch 2, step" in resumed.stdout
    final, expected = model_weights(run), model_weights(tmp_path / "ref")
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert not list(run.glob(".*.tmp"))  # no temporary file left behind


# ---- the training step itself, in float64: equal up to rounding ------------------------------------------------------
class FakeSplit:
    def __init__(self, n=19, length=600, classes=3):
        rng = np.random.default_rng(0)
        self.audio = rng.integers(-8000, 8000, (n, length), dtype=np.int16)
        self.labels = rng.integers(0, classes, n)


def _steps(world: World, folder: str) -> None:
    """Three steps of train_epoch (batches of 7, 7, 5 clips), class-weighted, with BatchNorm branches; saves weights."""
    from safetensors.torch import save_file

    from mrconv_audio.train import class_weights, train_epoch

    torch.set_default_dtype(torch.float64)
    if world.size > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=world.rank,
                                             world_size=world.size)
    torch.manual_seed(0)
    cfg = MRConvConfig.preset("small", labels=["a", "b", "c"], sample_rate=600, l0=8, n_modes=4, **TINY)
    model = MRConvClassifier(cfg).train()
    step_model = model
    if world.size > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(convert_batchnorms(model))
    optimizer = torch.optim.AdamW(model.parameter_groups(0.01))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    split = FakeSplit()
    batches = global_batches(np.random.default_rng(1).permutation(19), 7, world.size)
    sums = train_epoch(step_model, optimizer, scheduler, split, batches, world, torch.device("cpu"), None,
                       class_weights(split.labels, 3), workers=0, amp=False)
    if world.rank == 0:
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file({**tensors, "sums": torch.tensor([float(v) for v in sums])},
                  f"{folder}/weights{world.size}.safetensors")
    if world.size > 1:
        torch.distributed.destroy_process_group()


def _step_worker(rank, folder):
    _steps(World(rank, 2, rank), folder)


def test_two_process_training_steps_equal_one_process_steps_in_float64(tmp_path):
    mp.start_processes(_step_worker, args=(str(tmp_path),), nprocs=2, start_method=START)
    default = torch.get_default_dtype()
    try:
        _steps(World(), str(tmp_path))
    finally:
        torch.set_default_dtype(default)
    one, two = load_file(tmp_path / "weights1.safetensors"), load_file(tmp_path / "weights2.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        if key != "sums":
            torch.testing.assert_close(two[key], one[key], rtol=1e-10, atol=1e-12, msg=key)
    torch.testing.assert_close(two["sums"], one["sums"], rtol=1e-6, atol=0)  # the loss is taken in float32
    assert not torch.equal(one["blocks.0.conv.norms.0.running_mean"], torch.zeros(8))  # it did train
    assert one["sums"][2] == two["sums"][2] == 19  # (loss x clips, correct, clips) over both processes
