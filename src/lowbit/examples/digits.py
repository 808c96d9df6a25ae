"""A small CNN on scikit-learn's bundled 8x8 handwritten digits (1797 images, shipped inside
scikit-learn, no download): the image-classifier case of the guide, used to show what quantization
costs a convolutional network and what quantization-aware training wins back.

``data()`` splits the images into a fixed train / held-out test split (stratified, seed 0);
``train_float`` fits the float model; ``accuracy`` scores any model on a split (quantized layers in
their exact "dequant" kernel mode). With QAT (bench/qat.py):

    from lowbit import qat
    from lowbit.loaders import ModelHandle

    d = data()
    p = qat.prepare(ModelHandle(model=train_float(d), kind="module", name="digits"), "int2-asym-ch", ignore=[])
    qat.train(p, (d.x_train, d.y_train), qat.TrainSettings(steps=600, lr=1e-3, batch=64, distill=False))
    accuracy(qat.convert(p).model, d.x_test, d.y_test)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import InputError


@dataclass
class Digits:
    x_train: torch.Tensor  # (n, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (n,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


def data(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise InputError("the digits example needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = train_test_split(range(len(y)), test_size=test_fraction, random_state=seed, stratify=d.target)
    return Digits(x[tr], y[tr], x[te], y[te])


class DigitsCNN(nn.Module):
    """conv 3x3 (16) -> conv 3x3 (32) -> max-pool -> linear 512->64 -> linear 64->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def train_float(d: Digits, epochs: int = 40, lr: float = 3e-3, batch: int = 64, seed: int = 0) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(d.y_train), generator=g)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(model(d.x_train[idx]), d.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified as ``y``, in [0, 1]."""
    from lowbit.modules.kernel_mode import kernel_mode

    with kernel_mode(model, "dequant"):
        return float((model(x).argmax(-1) == y).float().mean())
