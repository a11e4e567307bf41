"""GPU checks (marked `gpu`; skipped without CUDA). They need torch and numpy only, so that
benchmarks/gpu_check.py runs them on a bare CUDA machine, with pytest or without it.

    python -m pytest -m gpu tests/test_gpu.py
"""
import numpy as np
import torch

try:
    import pytest

    pytestmark = [pytest.mark.gpu,
                  pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
except ImportError:  # benchmarks/gpu_check.py calls the tests itself
    pytest = None

from mrconv_audio import MRConvClassifier, MRConvConfig

LABELS = [f"c{i}" for i in range(12)]


def exact_float32():
    """No TF32 in matmuls and convolutions: the CPU comparison is float32 against float32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def randomize(model):
    """Non-trivial BatchNorm statistics, as after training (the identity statistics of a fresh model hide errors)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.5)
    return model


def test_cuda_forward_equals_cpu_forward_in_float32():
    exact_float32()
    for preset, rate in [("sc35-paper", 16000), ("logmel", 16000), ("small", 16000)]:
        torch.manual_seed(0)
        model = randomize(MRConvClassifier(MRConvConfig.preset(preset, labels=LABELS))).eval()
        x = torch.randn(3, rate) * 0.1
        with torch.no_grad():
            expected = model(x)
            got = model.cuda()(x.cuda()).cpu()
            half = model(x[:, ::2].cuda(), sample_rate=rate // 2).cpu()  # another rate: kernels resampled
            expected_half = model.cpu()(x[:, ::2], sample_rate=rate // 2)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=preset)
        torch.testing.assert_close(half, expected_half, rtol=1e-4, atol=1e-4, msg=preset)


def test_bf16_training_steps_are_finite_and_lower_the_loss_on_a_fixed_batch():
    from mrconv_audio.distributed import World, global_batches
    from mrconv_audio.train import train_epoch

    class Split:  # 32 fixed clips, 4 classes, seen again and again
        audio = (np.random.default_rng(0).normal(0, 3000, (32, 16000))).astype(np.int16)
        labels = np.arange(32) % 4

    torch.manual_seed(0)
    model = MRConvClassifier(MRConvConfig.preset("sc35-paper", labels=LABELS[:4], dropout=0.0)).cuda().train()
    optimizer = torch.optim.AdamW(model.parameter_groups(lr=0.002))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = global_batches(np.arange(32), 16, 1)
    losses = []
    for _ in range(6):
        loss_sum, _, seen = train_epoch(model, optimizer, scheduler, Split, batches, World(), torch.device("cuda"),
                                        None, None, workers=0, amp=True)
        losses.append(loss_sum / seen)
    assert all(np.isfinite(losses)), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < 0.7 * losses[0], losses


def test_reparameterization_is_exact_on_the_gpu():
    exact_float32()
    for preset in ("sc35-paper", "logmel"):
        torch.manual_seed(0)
        model = randomize(MRConvClassifier(MRConvConfig.preset(preset, labels=LABELS))).cuda().eval()
        x = torch.randn(4, 16000, device="cuda") * 0.1
        with torch.no_grad():
            branches = model(x)
            merged = model.reparameterize()(x)
            merged_8k = model(x[:, ::2], sample_rate=8000)
        torch.testing.assert_close(merged, branches, rtol=1e-4, atol=1e-4, msg=preset)
        assert torch.isfinite(merged_8k).all()


def test_the_streaming_engine_and_the_demo_pick_the_gpu():
    from mrconv_audio.device import pick_device
    from mrconv_audio.streaming import KeywordSpotter

    assert pick_device("auto").type == "cuda"
    model = MRConvClassifier(MRConvConfig.preset("logmel", labels=LABELS)).reparameterize()
    spotter = KeywordSpotter(model, 16000)
    assert spotter.device.type == "cuda" and next(spotter.model.parameters()).is_cuda
    results = spotter.push((np.random.default_rng(0).normal(0, 0.1, 32000)).astype(np.float32))
    assert results, "two seconds of audio gave no classification"
    try:
        from app.demo import ClipAnalyzer  # the demo's engine; gradio itself is only needed to serve it
    except ImportError as e:
        if pytest is not None:
            pytest.skip(f"app.demo needs a module this machine lacks: {e}")
        return
    assert ClipAnalyzer(model).device.type == "cuda"


def test_two_gpus_synchronize_batchnorm_with_nccl(tmp_path=None):
    """Only with 2+ GPUs: torch's own SyncBatchNorm path is not used; ours over NCCL equals one big batch."""
    if torch.cuda.device_count() < 2:
        if pytest is not None:
            pytest.skip("needs 2 GPUs")
        return
    import tempfile

    import torch.multiprocessing as mp

    folder = tmp_path or tempfile.mkdtemp()
    mp.start_processes(_nccl_worker, args=(str(folder),), nprocs=2, start_method="spawn")
    torch.manual_seed(0)
    x = torch.randn(8, 3, 50) * 2 + 5
    expected = torch.nn.functional.batch_norm(x, None, None, training=True)
    got = np.concatenate([np.load(f"{folder}/rank{r}.npy") for r in range(2)])
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def _nccl_worker(rank, folder):
    import torch.distributed as dist

    from mrconv_audio.distributed import SyncBatchNorm

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 50) * 2 + 5
    norm = SyncBatchNorm(3, affine=False).cuda().train()
    np.save(f"{folder}/rank{rank}.npy", norm(x[rank * 4 : rank * 4 + 4].cuda()).cpu().numpy())
    dist.destroy_process_group()
