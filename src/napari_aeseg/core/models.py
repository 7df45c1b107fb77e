"""Networks: a U-Net shaped autoencoder written as encoder + decoder + head.

The split is literal so that a segmenter can take the encoder of a trained denoiser and put
a new decoder and head on it (``encoder.*`` weights are copied, the rest start fresh).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ArchitectureConfig


def _conv(dims: int):
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(dims: int, channels: int, batch_norm: bool) -> nn.Module:
    if not batch_norm:
        return nn.Identity()
    return nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)


class ConvBlock(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by normalisation and ReLU."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, batch_norm: bool):
        conv = _conv(dims)
        super().__init__(
            conv(in_ch, out_ch, 3, padding=1, bias=not batch_norm),
            _norm(dims, out_ch, batch_norm),
            nn.ReLU(inplace=True),
            conv(out_ch, out_ch, 3, padding=1, bias=not batch_norm),
            _norm(dims, out_ch, batch_norm),
            nn.ReLU(inplace=True),
        )


class MaxBlurPool(nn.Module):
    """Max pooling with stride 1, then a [1, 2, 1] blur with stride 2 (Zhang 2019, N2V2).

    Plain strided max pooling aliases, which shows as checkerboard artefacts in blind-spot
    denoising; blurring before subsampling removes them.
    """

    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.dims = dims
        self.channels = channels
        k1 = torch.tensor([1.0, 2.0, 1.0])
        kernel = k1[:, None] * k1[None, :]
        if dims == 3:
            kernel = kernel[:, :, None] * k1[None, None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer(
            "kernel", kernel.expand(channels, 1, *kernel.shape).contiguous(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (0, 1) * self.dims
        x = F.pad(x, pad, mode="replicate")
        if self.dims == 3:
            x = F.max_pool3d(x, 2, stride=1)
            x = F.pad(x, (1,) * 6, mode="replicate")
            return F.conv3d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)
        x = F.max_pool2d(x, 2, stride=1)
        x = F.pad(x, (1,) * 4, mode="replicate")
        return F.conv2d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)


class Encoder(nn.Module):
    """Returns the feature maps of every level, full resolution first, bottleneck last."""

    def __init__(self, arch: ArchitectureConfig):
        super().__init__()
        d = arch.spatial_dims
        self.channels = [arch.base_channels * 2**i for i in range(arch.depth + 1)]
        self.stem = ConvBlock(d, arch.in_channels, self.channels[0], arch.batch_norm)
        self.downs = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i in range(1, arch.depth + 1):
            if arch.blur_pool:
                self.downs.append(MaxBlurPool(d, self.channels[i - 1]))
            else:
                self.downs.append(nn.MaxPool3d(2) if d == 3 else nn.MaxPool2d(2))
            self.blocks.append(
                ConvBlock(d, self.channels[i - 1], self.channels[i], arch.batch_norm)
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for down, block in zip(self.downs, self.blocks, strict=True):
            feats.append(block(down(feats[-1])))
        return feats


class Decoder(nn.Module):
    """Upsamples the bottleneck back to full resolution, joining the encoder's skips."""

    def __init__(self, arch: ArchitectureConfig):
        super().__init__()
        d = arch.spatial_dims
        ch = [arch.base_channels * 2**i for i in range(arch.depth + 1)]
        self.top_skip = arch.top_skip
        self.mode = "trilinear" if d == 3 else "bilinear"
        self.reduce = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i in range(arch.depth, 0, -1):
            self.reduce.append(_conv(d)(ch[i], ch[i - 1], 1))
            with_skip = i > 1 or arch.top_skip
            in_ch = ch[i - 1] * (2 if with_skip else 1)
            self.blocks.append(ConvBlock(d, in_ch, ch[i - 1], arch.batch_norm))

    def forward(self, feats: list[torch.Tensor | None], size: tuple[int, ...]) -> torch.Tensor:
        """``feats[0]`` may be ``None`` without the top skip; ``size`` is the input's size."""
        x = feats[-1]
        n = len(self.blocks)
        for j, (reduce, block) in enumerate(zip(self.reduce, self.blocks, strict=True)):
            skip = feats[n - 1 - j]
            target = skip.shape[2:] if skip is not None else size
            x = F.interpolate(reduce(x), size=target, mode=self.mode, align_corners=False)
            if j < n - 1 or self.top_skip:
                x = torch.cat([x, skip], dim=1)
            x = block(x)
        return x


def _init_weights(module: nn.Module) -> None:
    # He initialisation keeps activations from shrinking through the ReLU stack, which
    # matters without batch normalisation (PyTorch's default init is tuned for neither)
    if isinstance(module, nn.Conv2d | nn.Conv3d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class UNet(nn.Module):
    """Encoder -> decoder -> 1x1 head. Spatial sizes must be multiples of ``divisor``."""

    def __init__(self, arch: ArchitectureConfig, *, out_channels: int | None = None):
        super().__init__()
        self.arch = arch
        self.encoder = Encoder(arch)
        self.decoder = Decoder(arch)
        self.head = _conv(arch.spatial_dims)(
            arch.base_channels, out_channels or arch.out_channels, 1
        )
        self.apply(_init_weights)

    @property
    def divisor(self) -> int:
        return self.arch.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        if not self.arch.top_skip:
            feats[0] = None  # unused without the top skip: free the full-resolution map early
        return self.head(self.decoder(feats, tuple(x.shape[2:])))


def build_network(arch: ArchitectureConfig, *, out_channels: int | None = None) -> UNet:
    """The network factory: every model in napari-aeseg is built here from its config."""
    return UNet(arch, out_channels=out_channels)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
