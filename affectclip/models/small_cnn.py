"""A small ConvNet image tower trained from scratch: fast on CPU, learns from a few thousand small faces.

Why: a ViT from scratch needs far more data and steps than a CPU demo or a unit test can afford, and the ImageNet
CNNs cost too much per step on two cores. Four stride-2 stages of (conv-BN-ReLU) x2 keep the convolutional
inductive bias at a fraction of the cost; its last feature map doubles as the dense "patch" output for local losses.
"""

from __future__ import annotations

import torch.nn as nn

from affectclip.models.mobilenet_v2 import CNNTower
from affectclip.models.registry import IMAGE_TOWERS


class SmallConvNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers, in_ch = [], 3
        for w in widths:
            layers += [nn.Conv2d(in_ch, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            in_ch = w
        self.features = nn.Sequential(*layers)
        self.num_features = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x):
        return self.features(x)


@IMAGE_TOWERS.register("small_cnn")
class SmallCNNTower(CNNTower):
    """`small_cnn` tower: SmallConvNet -> mean pool -> projection; dense output = the last map's cells, projected."""

    def __init__(self, output_dim: int, image_size: int = 64, widths: list[int] | tuple[int, ...] = (32, 64, 128, 256),
                 dropout: float = 0.0) -> None:
        super().__init__(SmallConvNet(tuple(widths)), output_dim, image_size, freeze_backbone=False, dropout=dropout,
                         downsample=2 ** len(widths))
