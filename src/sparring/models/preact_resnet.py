"""Pre-activation ResNet-18 (He et al., 2016), the CIFAR variant of Wong et al. (2020) and Rice et al. (2020)."""

from __future__ import annotations

from torch import Tensor, nn

from sparring.models.base import MODELS, check_num_classes, image_channels


class PreActBlock(nn.Module):
    """BN → ReLU → conv3x3(stride) → BN → ReLU → conv3x3, plus a shortcut (1x1 conv on the activated input
    when the shape changes, identity otherwise)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(x).relu()
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.bn2(out).relu())
        return out + shortcut


@MODELS.register("preact_resnet18")
class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for 32x32 images: ~11.2M parameters for 10 classes; logits (B, K).

    Architecture: conv3x3(64) → 4 stages of 2 :class:`PreActBlock` (64, 128, 256, 512 channels, strides
    1, 2, 2, 2) → BN → ReLU → global avg pool → Linear(512, K) (He et al., "Identity Mappings in Deep Residual
    Networks", 2016; the CIFAR layout of Wong et al., "Fast is better than free", 2020). Parameter names
    follow that code (``layer1.0.shortcut.0``, ``bn``, ``linear``), so its checkpoints load as they are.
    """

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels = image_channels(input_shape, "preact_resnet18")
        check_num_classes(num_classes)
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        stages: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.pool = nn.AdaptiveAvgPool2d(1)  # = avg_pool2d(4) on 32x32 inputs
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)  # (B, 64, H, W)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (B, 512, H/8, W/8)
        out = self.pool(self.bn(out).relu()).flatten(1)  # (B, 512)
        return self.linear(out)
