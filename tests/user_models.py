"""Hand-written 'user' CNNs of the kinds people bring (not registry models): each exercises a layout the
model graph must read from structure, not from attribute names or definition order. All take 3x16x16. The
second half holds the forward idioms of the popular CIFAR architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ViewFC(nn.Module):
    """``features`` + ``fc`` with ``x.view(x.size(0), -1)``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1))


class HeadFirst(nn.Module):
    """The head is defined before the body: definition order is not execution order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 10)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class Residual(nn.Module):
    """A small ResNet: stem, identity block, downsampling block (1x1 shortcut), global pool, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.linear(torch.flatten(self.pool(x), 1))


class Depthwise(nn.Module):
    """MobileNet-v1 style: depthwise 3x3 + ReLU6, pointwise 1x1 + ReLU6, global pool."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6(),
            nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=24, bias=False), nn.BatchNorm2d(24), nn.ReLU6(),
            nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


class SEGate(nn.Module):
    """Squeeze-excite: x * hardsigmoid(fc2(relu(fc1(mean(x))))), Hardswish body, 1x1 convs as the FCs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.Hardswish()
        self.se1 = nn.Conv2d(16, 4, 1)
        self.se2 = nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.act(self.conv(x))
        g = F.hardsigmoid(self.se2(F.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = F.silu(self.out(x * g))
        return self.fc(x.mean((2, 3)))


class SELayer(nn.Module):
    """The squeeze-excite layer as most CIFAR repositories copy it: Linear FCs on ``pool(x).view(b, c)``, the
    gate reshaped with ``.view(b, c, 1, 1)`` and broadcast with ``expand_as``."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SEResNet(nn.Module):
    """A residual block with that SE layer before the shortcut add."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.se = SELayer(16)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.se(self.bn2(self.conv2(x))) + x)
        return self.linear(F.adaptive_avg_pool2d(out, (1, 1)).flatten(1))


class Concat(nn.Module):
    """Two branches (3x3 and 1x1 + GELU) concatenated on channels, avg-pooled."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(12 * 8 * 8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.a(x)), F.gelu(self.b(x))], dim=1)
        return self.fc(self.pool(x).reshape(x.shape[0], -1))


class HSwish(nn.Module):
    """h-swish written out, as many public MobileNetV3 ports do."""

    def forward(self, x):
        return x * F.relu6(x + 3, inplace=True) / 6


class MobileV3Block(nn.Module):
    """expand 1x1 → act → depthwise 3x3 → act (ONE activation module called twice) → squeeze-excite with a
    hand-written hard-sigmoid → project 1x1, residual when the shapes allow."""

    def __init__(self, c_in: int, c_exp: int, c_out: int, act: nn.Module, stride: int):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(c_in, c_exp, 1, bias=False), nn.BatchNorm2d(c_exp)
        self.dw = nn.Conv2d(c_exp, c_exp, 3, stride, 1, groups=c_exp, bias=False)
        self.bn2, self.act = nn.BatchNorm2d(c_exp), act
        self.se1, self.se2 = nn.Conv2d(c_exp, c_exp // 4, 1), nn.Conv2d(c_exp // 4, c_exp, 1)
        self.project, self.bn3 = nn.Conv2d(c_exp, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.act(self.bn2(self.dw(self.act(self.bn1(self.expand(x))))))
        g = F.relu6(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))) + 3) / 6
        y = self.bn3(self.project(y * g))
        return x + y if self.residual else y


class MobileV3(nn.Module):
    """A MobileNetV3-style user net: hand-written h-swish stem, blocks with reused activation modules."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn, self.hs = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), HSwish()
        self.blocks = nn.Sequential(MobileV3Block(8, 16, 8, nn.ReLU(inplace=True), 1),
                                    MobileV3Block(8, 24, 12, HSwish(), 2))
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        x = self.blocks(self.hs(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class OptionABlock(BasicBlock):
    """The widely copied CIFAR ResNet block with the parameter-free "option A" shortcut: a strided slice and
    zero channels, ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`` in a lambda module, added in place."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__(c_in, c_out, stride)
        if stride != 1 or c_in != c_out:
            pad = (c_out - c_in) // 2
            self.short = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += self.short(x)
        return F.relu(out)


class OptionAResNet(nn.Module):
    """That ResNet's head: ``F.avg_pool2d(out, out.size()[3])`` then ``out.view(out.size(0), -1)``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(OptionABlock(8, 8), OptionABlock(8, 16, stride=2))
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = self.layer1(F.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class PreActBlock(nn.Module):
    """Pre-activation residual block (BN → ReLU → conv): its BatchNorms follow no layer, so they stay unfused."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        out += shortcut
        return out


class PreActResNet(nn.Module):
    """A pre-activation ResNet (as in WideResNet / PreActResNet ports): BN → ReLU before every conv, a final
    BN → ReLU → pool."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.layers = nn.Sequential(PreActBlock(8, 8), PreActBlock(8, 16, stride=2))
        self.bn = nn.BatchNorm2d(16)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class WideBlock(nn.Module):
    """A WideResNet block as its popular port writes it: BN-ReLU first, functional dropout, ``torch.add``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, drop: float = 0.3):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.drop, self.same = drop, c_in == c_out
        self.shortcut = None if self.same else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        x = x if self.same else out
        out = F.dropout(F.relu(self.bn2(self.conv1(out))), p=self.drop, training=self.training)
        return torch.add(x if self.same else self.shortcut(x), self.conv2(out))


class WideResNet(nn.Module):
    """Head: BN-ReLU, ``F.avg_pool2d(out, 8)``, ``out.view(-1, self.channels)``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(WideBlock(8, 8), WideBlock(8, 16, stride=2))
        self.bn, self.channels, self.fc = nn.BatchNorm2d(16), 16, nn.Linear(16, 10)

    def forward(self, x):
        out = F.avg_pool2d(F.relu(self.bn(self.blocks(self.conv1(x)))), 8)
        return self.fc(out.view(-1, self.channels))


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, 2 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(2 * growth), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([out, x], 1)


class DenseNet(nn.Module):
    """DenseNet-BC style: pre-activation layers concatenated, a transition conv followed by an average pool."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.dense = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.trans_bn, self.trans = nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1, bias=False)
        self.bn, self.linear = nn.BatchNorm2d(8), nn.Linear(8, 10)

    def forward(self, x):
        out = F.avg_pool2d(self.trans(F.relu(self.trans_bn(self.dense(self.conv1(x))))), 2)
        out = F.avg_pool2d(F.relu(self.bn(out)), 8)
        return self.linear(out.view(out.size(0), -1))


def channel_shuffle(x, groups: int):
    """ShuffleNet's shuffle as its repositories write it."""
    batchsize, num_channels, height, width = x.data.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 units: channel split (``chunk``) or a strided two-branch unit, concat, channel shuffle."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride, half = stride, c_out // 2
        branch_in = c_in if stride > 1 else half
        self.branch2 = nn.Sequential(
            nn.Conv2d(branch_in, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        if stride > 1:
            self.branch1 = nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                                         nn.BatchNorm2d(c_in), nn.Conv2d(c_in, half, 1, bias=False),
                                         nn.BatchNorm2d(half), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    """A ShuffleNetV2-style user net: split / shuffle units, a ``torch.split`` side path, ``x.mean([2, 3])``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1))
        self.conv5 = nn.Conv2d(12, 16, 1)
        self.fc = nn.Linear(20, 10)

    def forward(self, x):
        x = self.stages(self.conv1(x))
        a, b = torch.split(x, [4, 12], dim=1)
        x = torch.cat([a, F.relu(self.conv5(b))], 1)
        return self.fc(x.mean([2, 3]))


class GhostHead(nn.Module):
    """Odds and ends of hand-written nets: a Ghost module (cheap depthwise features with a per-channel PReLU,
    ``cat(...)[:, :k]``), a residual branch scaled by a number (``x + 0.5 * mish(conv(x))``), ``/ 2``, a global
    max pool, a conv classifier squeezed to [N, 10] and a ``log_softmax`` output."""

    def __init__(self):
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(3, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
        self.cheap = nn.Sequential(nn.Conv2d(6, 6, 3, 1, 1, groups=6, bias=False), nn.BatchNorm2d(6),
                                   nn.PReLU(6, 0.1))
        self.conv = nn.Conv2d(10, 10, 3, padding=1)
        self.act = nn.Mish()
        self.classifier = nn.Conv2d(10, 10, 1)

    def forward(self, x):
        y = self.primary(x)
        x = torch.cat([y, self.cheap(y)], dim=1)[:, :10, :, :]
        x = (x + 0.5 * self.act(self.conv(x))) / 2
        x = self.classifier(F.adaptive_max_pool2d(x, 1)).squeeze(-1).squeeze(-1)
        return F.log_softmax(x, dim=1)


class SplitBlock(nn.Module):
    """A channel split whose size is computed in Python from the input's channels (fx cannot trace ``int()`` of
    a size symbolically)."""

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class ShuffleBlock(nn.Module):
    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.size()
        return x.view(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class SplitUnit(nn.Module):
    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(ratio)
        c = int(channels * ratio)
        self.conv1, self.bn1 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.shuffle = ShuffleBlock()

    def forward(self, x):
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class ShuffleNetV2Sized(nn.Module):
    """ShuffleNetV2 as the popular CIFAR repository writes it: ``int(x.size(1) * ratio)`` split, view / permute /
    reshape shuffle, ``F.avg_pool2d(out, 4)``, ``out.view(out.size(0), -1)``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.down = nn.Sequential(nn.Conv2d(12, 12, 3, 2, 1, groups=12, bias=False), nn.BatchNorm2d(12))
        self.units = nn.Sequential(SplitUnit(12), SplitUnit(12))
        self.conv2, self.bn2 = nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.units(self.down(out))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 8)
        return self.linear(out.view(out.size(0), -1))


class SiLUResNet(nn.Module):
    """A ResNet whose user swapped ReLU for SiLU: the activation after each residual add is curved and follows no
    layer (the integer model's table on the sum)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.act = nn.GELU()
        self.linear = nn.Linear(8, 10)

    def forward(self, x):
        x = F.silu(self.bn1(self.conv1(x)))
        out = F.silu(self.bn2(self.conv2(x)))
        out = F.silu(self.bn3(self.conv3(out)) + x)
        out = self.act(out + x)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ScaledResidual(nn.Module):
    """Inception-ResNet's residual scaling spelled ``torch.add(x, branch, alpha=0.2)``, a high-pass branch
    ``x - F.max_pool2d(x, 3, 1, 1)`` (a tensor difference) and ``y.add(x, alpha=0.5)``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.conv3 = nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.linear = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.add(x, F.relu(self.conv2(x)), alpha=0.2)
        y = F.relu(self.conv3(x - F.max_pool2d(x, 3, 1, 1)))
        return self.linear(F.adaptive_avg_pool2d(y.add(x, alpha=0.5), 1).flatten(1))


class TorchvisionSE(nn.Module):
    """torchvision's SqueezeExcitation: ``self._scale(input) * input``."""

    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

    def _scale(self, x):
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))

    def forward(self, x):
        return self._scale(x) * x


class TorchvisionMobileV3(nn.Module):
    """MobileNetV3 as torchvision writes it: Conv-BN-act Sequentials, an in-place residual ``result += input``,
    and a classifier with in-place Hardswish and Dropout after the first Linear (an in-place op overwrites the
    quantizer output it reads)."""

    def __init__(self):
        super().__init__()

        def cna(i, o, k=1, s=1, g=1, act=True):
            return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o),
                                 *([nn.Hardswish(inplace=True)] if act else []))

        self.stem = cna(3, 16, 3, 2)
        self.block = nn.Sequential(cna(16, 32), cna(32, 32, 3, g=32), TorchvisionSE(32, 8), cna(32, 16, act=False))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(inplace=True), nn.Dropout(0.2, inplace=True),
                                        nn.Linear(32, 10))

    def forward(self, x):
        x = self.stem(x)
        result = self.block(x)
        result += x
        return self.classifier(torch.flatten(self.avgpool(result), 1))


# ---- the forward idioms of the popular CIFAR architectures (GoogLeNet, DLA, EfficientNet, DPN, PNASNet, SENet,
# MobileNetV2, ResNeXt, RegNet) at tiny widths, written for these tests: pooling, views, slices, concatenations
# and gates spelled as those repositories do (``F.avg_pool2d(out, 8)``, ``out.view(out.size(0), -1)``,
# ``x[:, :d] + out[:, :d]``, ``self.root([x1, x2])`` with ``torch.cat(xs, 1)``, ``x * x.sigmoid()``,
# training-only dropout / drop-connect)

def cbr(i, o, k=3, s=1, g=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU(True))


class Inception(nn.Module):
    def __init__(self, i, n1, n3r, n3, n5r, n5, pp):
        super().__init__()
        self.b1 = cbr(i, n1, 1)
        self.b2 = nn.Sequential(cbr(i, n3r, 1), cbr(n3r, n3))
        self.b3 = nn.Sequential(cbr(i, n5r, 1), cbr(n5r, n5), cbr(n5, n5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), cbr(i, pp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = cbr(3, 16)
        self.a3 = Inception(16, 4, 4, 8, 2, 4, 4)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.a4 = Inception(20, 8, 4, 8, 2, 4, 4)
        self.avgpool = nn.AvgPool2d(8, stride=1)
        self.linear = nn.Linear(24, 10)

    def forward(self, x):
        out = self.maxpool(self.a3(self.pre(x)))
        out = self.avgpool(self.a4(out))
        return self.linear(out.view(out.size(0), -1))


class Root(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o)

    def forward(self, xs):
        return F.relu(self.bn(self.conv(torch.cat(xs, 1))))


class Tree(nn.Module):
    def __init__(self, i, o, s=1):
        super().__init__()
        self.left, self.right = BasicBlock(i, o, s), BasicBlock(o, o, 1)  # DLA uses the ResNet block
        self.root = Root(2 * o, o)

    def forward(self, x):
        out1 = self.left(x)
        out2 = self.right(out1)
        return self.root([out1, out2])


class SimpleDLA(nn.Module):
    def __init__(self):
        super().__init__()
        self.base = cbr(3, 8)
        self.layer = Tree(8, 16, 2)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = self.layer(self.base(x))
        out = F.avg_pool2d(out, 8)
        return self.linear(out.view(out.size(0), -1))


class SE(nn.Module):
    def __init__(self, i, se):
        super().__init__()
        self.se1, self.se2 = nn.Conv2d(i, se, 1, bias=True), nn.Conv2d(se, i, 1, bias=True)

    def forward(self, x):
        out = F.adaptive_avg_pool2d(x, (1, 1))
        out = x * torch.sigmoid(self.se2(F.relu(self.se1(out))))
        return out


def swish(x):
    return x * x.sigmoid()


class EffBlock(nn.Module):
    def __init__(self, i, o, expand, s, drop=0.2):
        super().__init__()
        self.s, self.expand, self.drop = s, expand, drop
        c = expand * i
        self.conv1, self.bn1 = nn.Conv2d(i, c, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False), nn.BatchNorm2d(c)
        self.se = SE(c, max(1, i // 4))
        self.conv3, self.bn3 = nn.Conv2d(c, o, 1, bias=False), nn.BatchNorm2d(o)
        self.has_skip = s == 1 and i == o

    def forward(self, x):
        out = x if self.expand == 1 else swish(self.bn1(self.conv1(x)))
        out = swish(self.bn2(self.conv2(out)))
        out = self.se(out)
        out = self.bn3(self.conv3(out))
        if self.has_skip:
            if self.training and self.drop > 0:
                out = out * (torch.rand(x.size(0), 1, 1, 1) > self.drop) / (1 - self.drop)
            out = out + x
        return out


class EfficientNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layers = nn.Sequential(EffBlock(8, 8, 1, 1), EffBlock(8, 12, 4, 2), EffBlock(12, 12, 4, 1))
        self.linear = nn.Linear(12, 10)

    def forward(self, x):
        out = swish(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        if self.training:
            out = F.dropout(out, p=0.2)
        return self.linear(out)


class DPNBottleneck(nn.Module):
    def __init__(self, last, inp, out, dense, s, first):
        super().__init__()
        self.out_planes, self.dense = out, dense
        self.conv1, self.bn1 = nn.Conv2d(last, inp, 1, bias=False), nn.BatchNorm2d(inp)
        self.conv2, self.bn2 = nn.Conv2d(inp, inp, 3, s, 1, groups=4, bias=False), nn.BatchNorm2d(inp)
        self.conv3, self.bn3 = nn.Conv2d(inp, out + dense, 1, bias=False), nn.BatchNorm2d(out + dense)
        self.shortcut = nn.Sequential()
        if first:
            self.shortcut = nn.Sequential(nn.Conv2d(last, out + dense, 1, s, bias=False),
                                          nn.BatchNorm2d(out + dense))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        x = self.shortcut(x)
        d = self.out_planes
        out = torch.cat([x[:, :d, :, :] + out[:, :d, :, :], x[:, d:, :, :], out[:, d:, :, :]], 1)
        return F.relu(out)


class DPN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.l1 = DPNBottleneck(16, 8, 16, 4, 1, True)
        self.l2 = DPNBottleneck(24, 8, 16, 4, 1, False)
        self.linear = nn.Linear(28, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.l2(self.l1(out))
        out = F.avg_pool2d(out, 4)
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.view(out.size(0), -1))


class SepConv(nn.Module):
    def __init__(self, i, o, k, s):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, k, s, (k - 1) // 2, bias=False, groups=i)
        self.bn1 = nn.BatchNorm2d(o)

    def forward(self, x):
        return self.bn1(self.conv1(x))


class CellA(nn.Module):
    def __init__(self, i, o, s=1):
        super().__init__()
        self.s = s
        self.sep = SepConv(i, o, 7, s)
        if s == 2:
            self.conv1, self.bn1 = nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o)

    def forward(self, x):
        y1 = self.sep(x)
        y2 = F.max_pool2d(x, kernel_size=3, stride=self.s, padding=1)
        if self.s == 2:
            y2 = self.bn1(self.conv1(y2))
        return F.relu(y1 + y2)


class PNASNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.c1, self.c2 = CellA(8, 8), CellA(8, 16, 2)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.c2(self.c1(out))
        out = F.avg_pool2d(out, 8)
        return self.linear(out.view(out.size(0), -1))


class SEPreAct(nn.Module):
    def __init__(self, i, o, s=1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(i), nn.Conv2d(i, o, 3, s, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(o), nn.Conv2d(o, o, 3, 1, 1, bias=False)
        if s != 1 or i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False))
        self.fc1, self.fc2 = nn.Conv2d(o, o // 4, 1), nn.Conv2d(o // 4, o, 1)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        w = F.avg_pool2d(out, out.size(2))
        w = F.relu(self.fc1(w))
        w = F.sigmoid(self.fc2(w))
        out = out * w
        out += shortcut
        return out


class StemNet(nn.Module):
    """conv-bn-relu stem → ``layers`` → ``F.avg_pool2d(out, 8)`` → view → linear (SENet, ResNeXt)."""

    def __init__(self, stem_kernel: int, layers: nn.Module, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, stem_kernel, 1, stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layers, self.linear = layers, nn.Linear(features, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.avg_pool2d(out, 8)
        return self.linear(out.view(out.size(0), -1))


class SENet(StemNet):
    def __init__(self):
        super().__init__(3, nn.Sequential(SEPreAct(8, 8), SEPreAct(8, 16, 2)), 16)


class MBV2Block(nn.Module):
    def __init__(self, i, o, e, s):
        super().__init__()
        self.s = s
        c = e * i
        self.conv1, self.bn1 = nn.Conv2d(i, c, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = nn.Conv2d(c, o, 1, bias=False), nn.BatchNorm2d(o)
        self.shortcut = nn.Sequential()
        if s == 1 and i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.s == 1 else out


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layers = nn.Sequential(MBV2Block(8, 8, 1, 1), MBV2Block(8, 12, 6, 2), MBV2Block(12, 12, 6, 1))
        self.conv2, self.bn2 = nn.Conv2d(12, 32, 1, bias=False), nn.BatchNorm2d(32)
        self.linear = nn.Linear(32, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 8)
        out = out.view(out.size(0), -1)
        return self.linear(out)


class ResNeXtBlock(nn.Module):
    def __init__(self, i, card, w, s):
        super().__init__()
        g = card * w
        self.conv1, self.bn1 = nn.Conv2d(i, g, 1, bias=False), nn.BatchNorm2d(g)
        self.conv2, self.bn2 = nn.Conv2d(g, g, 3, s, 1, groups=card, bias=False), nn.BatchNorm2d(g)
        self.conv3, self.bn3 = nn.Conv2d(g, 2 * g, 1, bias=False), nn.BatchNorm2d(2 * g)
        self.shortcut = nn.Sequential()
        if s != 1 or i != 2 * g:
            self.shortcut = nn.Sequential(nn.Conv2d(i, 2 * g, 1, s, bias=False), nn.BatchNorm2d(2 * g))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNeXt(StemNet):
    def __init__(self):
        super().__init__(1, nn.Sequential(ResNeXtBlock(8, 2, 4, 1), ResNeXtBlock(16, 2, 4, 2)), 16)


class RegNetBlock(nn.Module):
    def __init__(self, i, o, s, g, se_ratio=0.25):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o)
        self.conv2, self.bn2 = nn.Conv2d(o, o, 3, s, 1, groups=o // g, bias=False), nn.BatchNorm2d(o)
        w = int(round(i * se_ratio))
        self.se = SE(o, w)
        self.conv3, self.bn3 = nn.Conv2d(o, o, 1, bias=False), nn.BatchNorm2d(o)
        self.shortcut = nn.Sequential()
        if s != 1 or i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.se(out)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class RegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layer = nn.Sequential(RegNetBlock(8, 16, 2, 8), RegNetBlock(16, 16, 1, 8))
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer(out)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.linear(out.view(out.size(0), -1))



class SequentialFlatten(nn.Sequential):
    """A whole model as one ``nn.Sequential`` with ``nn.Flatten`` modules (ReLU → MaxPool → Flatten → Linear):
    DOMR's OMR copies must be made before the flatten."""

    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10))


class GrayLeNet(nn.Module):
    """LeNet-5 as tutorials write it, on one-channel, non-square images (:data:`GRAY_INPUT`): functional ReLU and
    max-pool, ``torch.flatten``, three Linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 4 * 2, 32), nn.Linear(32, 24), nn.Linear(24, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))))


GRAY_INPUT = (1, 28, 20)


USER_MODELS = {"view_fc": ViewFC, "head_first": HeadFirst, "residual": Residual, "depthwise": Depthwise,
               "se_gate": SEGate, "concat": Concat, "mobile_v3": MobileV3, "option_a_resnet": OptionAResNet,
               "preact_resnet": PreActResNet, "se_resnet": SEResNet,
               "wide_resnet": WideResNet, "densenet": DenseNet, "shufflenet": ShuffleNet, "ghost_head": GhostHead,
               "shufflenet_v2_sized": ShuffleNetV2Sized, "silu_resnet": SiLUResNet, "googlenet": GoogLeNet,
               "dla": SimpleDLA, "efficientnet": EfficientNet, "dpn": DPN, "pnasnet": PNASNet, "senet": SENet,
               "mobilenet_v2": MobileNetV2, "resnext": ResNeXt, "regnet": RegNet,
               "sequential_flatten": SequentialFlatten, "scaled_residual": ScaledResidual,
               "torchvision_mobile_v3": TorchvisionMobileV3}
INPUT = (3, 16, 16)


def build(name: str, seed: int = 0) -> nn.Module:
    """The model with random weights and non-trivial BN statistics, eval mode."""
    torch.manual_seed(seed)
    model = USER_MODELS[name]()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
    return model.eval()


def images(n: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *INPUT, generator=torch.Generator().manual_seed(seed))
