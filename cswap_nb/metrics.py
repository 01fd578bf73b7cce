"""Evaluation metrics."""
from __future__ import annotations

import torch
from torch import nn

from .data import as_tensors


def evaluate(model: nn.Module, data, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent on ``data`` (an ``(x, y)`` pair, Dataset or DataLoader).

    The model is run in eval mode without autograd; its train/eval mode is restored.
    """
    device = next(model.parameters()).device
    if isinstance(data, torch.utils.data.DataLoader):
        loader = data
    else:
        x, y = as_tensors(data)
        loader = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.inference_mode():
            for xb, yb in loader:
                pred = model(xb.to(device)).argmax(1).cpu()
                correct += int((pred == yb).sum())
                total += len(yb)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the data is empty")
    return 100.0 * correct / total
