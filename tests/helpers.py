"""Helpers shared by the tests (pytest puts this folder on sys.path)."""
import torch


def randomize_batchnorms(module: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, as after training."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.5)
