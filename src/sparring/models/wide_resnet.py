"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, BMVC 2016), as used by Madry et al. and TRADES."""

from __future__ import annotations

import math

from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.models.base import MODELS, check_num_classes, image_channels


class WideBlock(nn.Module):
    """BN → ReLU → conv3x3(stride) → BN → ReLU → dropout → conv3x3, plus a shortcut (1x1 conv on the
    activated input when the shape changes, identity on the raw input otherwise)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.convShortcut: nn.Module | None = None  # the reference name, so released checkpoints load
        if stride != 1 or in_planes != planes:
            self.convShortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(x).relu()
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.dropout(self.bn2(self.conv1(out)).relu())
        return self.conv2(out) + shortcut


class WideGroup(nn.Module):
    """``n`` :class:`WideBlock` in sequence, the first one changing width and stride."""

    def __init__(self, n: int, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, dropout) for i in range(n))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


@MODELS.register("wide_resnet")
class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 images; logits (B, K).

    Architecture: conv3x3(16) → 3 groups of n = (depth − 4) / 6 :class:`WideBlock` with 16k, 32k, 64k
    channels (strides 1, 2, 2) → BN → ReLU → global avg pool → Linear(64k, K) (Zagoruyko & Komodakis, "Wide
    Residual Networks", 2016; the layout of Madry et al. 2018 and Zhang et al. (TRADES) 2019, without the
    unused ``sub_block1`` of the TRADES code). WRN-28-10 has ~36.5M and WRN-34-10 ~46.2M parameters.
    Parameter names follow the reference code (``block1.layer.0.convShortcut``, ``bn1``, ``fc``), so its
    checkpoints load with ``load_state_dict`` (TRADES ones after dropping their ``sub_block1.*`` keys).
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = image_channels(input_shape, "wide_resnet")
        check_num_classes(num_classes)
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"wide_resnet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
        if widen_factor < 1:
            raise ConfigError(f"wide_resnet widen_factor must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"wide_resnet dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(channels, 16, 3, stride=1, padding=1, bias=False)
        self.block1 = WideGroup(n, 16, widths[0], 1, dropout)
        self.block2 = WideGroup(n, widths[0], widths[1], 2, dropout)
        self.block3 = WideGroup(n, widths[1], widths[2], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.pool = nn.AdaptiveAvgPool2d(1)  # = avg_pool2d(8) on 32x32 inputs
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference initialization: He-normal with fan_out for convs, BN at identity, zero linear bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)  # (B, 16, H, W)
        out = self.block3(self.block2(self.block1(out)))  # (B, 64k, H/4, W/4)
        out = self.pool(self.bn1(out).relu()).flatten(1)  # (B, 64k)
        return self.fc(out)


@MODELS.register("wrn28_10")
def wrn28_10(*, input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis, 2016; as in Rice et al., 2020 and Carmon et al., 2019): ~36.5M parameters."""
    return WideResNet(input_shape=input_shape, num_classes=num_classes, depth=28, widen_factor=10, dropout=dropout)


@MODELS.register("wrn34_10")
def wrn34_10(*, input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> WideResNet:
    """WRN-34-10 (Madry et al., 2018; Zhang et al., TRADES, 2019): ~46.2M parameters."""
    return WideResNet(input_shape=input_shape, num_classes=num_classes, depth=34, widen_factor=10, dropout=dropout)
