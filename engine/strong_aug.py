"""The strong view of MLKD (Jin et al., CVPR 2023) as batched ops on uint8 tensors.

MLKD trains on a weak view (the CIFAR crop + flip) and a strong view of every image: its own
crop + flip, then FixMatch's RandAugment variant and a Cutout. That variant applies
`n = 2` ops drawn uniformly (with replacement) from 14, each with a magnitude drawn
uniformly from the op's range (no fixed magnitude), then paints a grey square of side
u * W (u uniform in [0, 0.5)) at a uniform random position:

    op            range          what it does to uint8 pixels (PIL semantics)
    autocontrast  -              per channel, stretch [min, max] to [0, 255]
    brightness    [0.05, 0.95]   blend with black
    color         [0.05, 0.95]   blend with the grey-scale image
    contrast      [0.05, 0.95]   blend with the mean grey level
    equalize      -              per-channel histogram equalisation
    identity      -
    posterize     [4, 8]         keep int(v) high bits
    rotate        [-30, 30]      degrees, counter-clockwise, nearest, black fill
    sharpness     [0.05, 0.95]   blend with the 3x3 SMOOTH-filtered image
    shear_x/y     [-0.3, 0.3]    affine, origin top-left, nearest, black fill
    solarize      [0, 256]       invert the pixels at or above v
    translate_x/y [-0.3, 0.3]    shift by v * size, black fill

Every op is computed for the whole batch at once and kept where a sample drew it, so the
view costs a few dozen tensor ops per batch, on the loader's device. The random draws come
as tensors (`draw_params`), so the device loader takes them from its per-epoch CPU plan and
the DataLoader path from torch's RNG inside a transform (`StrongTransform`): both paths run
the same code. The ops are bit-identical to PIL's (the reference pipeline's) on the test
images, except `rotate`, where PIL steps through pixel coordinates by repeated addition and so
moves a few boundary pixels (< 0.5 %) by one position (tests/test_recent_methods.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

OPS = (
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "identity",
    "posterize",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
)
RANGES = {
    "autocontrast": (0.0, 1.0),
    "brightness": (0.05, 0.95),
    "color": (0.05, 0.95),
    "contrast": (0.05, 0.95),
    "equalize": (0.0, 1.0),
    "identity": (0.0, 1.0),
    "posterize": (4.0, 8.0),
    "rotate": (-30.0, 30.0),
    "sharpness": (0.05, 0.95),
    "shear_x": (-0.3, 0.3),
    "shear_y": (-0.3, 0.3),
    "solarize": (0.0, 256.0),
    "translate_x": (-0.3, 0.3),
    "translate_y": (-0.3, 0.3),
}
NUM_OPS = 2  # RandAugment(n = 2) in MLKD's CIFAR loader
CUTOUT_MAX = 0.5  # side of the cutout square as a fraction of the width, uniform in [0, 0.5)
CUTOUT_FILL = (125, 123, 114)
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


class StrongParams(NamedTuple):
    """The random draws of the strong view of N images (CPU or device tensors)."""

    ops: Tensor  # int64 (N, NUM_OPS): index into OPS
    mags: Tensor  # float32 (N, NUM_OPS): uniform [0, 1), mapped to each op's range
    cut: Tensor  # float32 (N,): cutout side / width, uniform [0, CUTOUT_MAX)
    cut_y: Tensor  # float32 (N,): cutout centre / height, uniform [0, 1)
    cut_x: Tensor  # float32 (N,): cutout centre / width, uniform [0, 1)

    def to(self, device) -> StrongParams:
        return StrongParams(*(t.to(device, non_blocking=True) for t in self))

    def slice(self, start: int, end: int) -> StrongParams:
        return StrongParams(*(t[start:end] for t in self))


def draw_params(n: int, generator: torch.Generator | None = None) -> StrongParams:
    """Uniform draws for n images (from torch's global RNG when no generator is given)."""
    g = {"generator": generator} if generator is not None else {}
    return StrongParams(
        torch.randint(0, len(OPS), (n, NUM_OPS), **g),
        torch.rand(n, NUM_OPS, **g),
        torch.rand(n, **g) * CUTOUT_MAX,
        torch.rand(n, **g),
        torch.rand(n, **g),
    )


# ---------------------------------------------------------------- colour ops (float in, float out)
def _grey(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma as PIL's convert("L") computes it: (B, 1, H, W), rounded."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536)


def _blend(degenerate: Tensor, x: Tensor, v: Tensor) -> Tensor:
    return torch.floor(degenerate + v.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 255)


def _smooth(x: Tensor) -> Tensor:
    """PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13); border pixels stay as they are."""
    c = x.shape[1]
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5
    k = (k / 13).expand(c, 1, 3, 3)
    inner = F.conv2d(x, k, groups=c).round().clamp(0, 255)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    xd, lo, hi = x.double(), lo.double(), hi.double()  # PIL computes its table in doubles
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp_min(1)
    out = torch.trunc(xd * scale - lo * scale).clamp(0, 255).to(x.dtype)  # int(i*scale+offset)
    return torch.where(hi > lo, out, x)


def _equalize(x: Tensor) -> Tensor:
    """PIL's ImageOps.equalize per channel: lut[i] = (step // 2 + sum(h[:i])) // step."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    last = 255 - torch.flip(hist > 0, dims=[1]).long().argmax(dim=1)  # last non-empty bin
    step = (h * w - hist.gather(1, last[:, None]).squeeze(1)) // 255
    before = torch.cumsum(hist, dim=1) - hist  # pixels strictly below each level
    safe = step.clamp_min(1)[:, None]
    lut = ((safe // 2 + before) // safe).clamp(max=255)
    out = lut.gather(1, flat).to(x.dtype)
    out = torch.where(step[:, None] > 0, out, flat.to(x.dtype))
    return out.view(b, c, h, w)


def _posterize(x: Tensor, v: Tensor) -> Tensor:
    bits = v.floor().clamp(1, 8).long()
    keep = (255 - ((1 << (8 - bits)) - 1)).view(-1, 1, 1, 1)  # high-bit mask
    return (x.long() & keep).to(x.dtype)


def _solarize(x: Tensor, v: Tensor) -> Tensor:
    return torch.where(x < v.view(-1, 1, 1, 1), x, 255 - x)


# ---------------------------------------------------------------- geometric ops
def _inverse_affine(name_index: Tensor, v: Tensor, h: int, w: int) -> Tensor:
    """(N, 2, 3): for each output pixel centre (x, y) the input point, in pixels."""
    n = v.shape[0]
    v = v.double()  # PIL computes its coefficients in doubles; float32 moves boundary pixels
    m = torch.zeros(n, 2, 3, dtype=torch.float64, device=v.device)
    m[:, 0, 0] = 1
    m[:, 1, 1] = 1
    idx = {name: OPS.index(name) for name in GEOMETRIC}
    sx = name_index == idx["shear_x"]
    sy = name_index == idx["shear_y"]
    tx = name_index == idx["translate_x"]
    ty = name_index == idx["translate_y"]
    rot = name_index == idx["rotate"]
    m[:, 0, 1] = torch.where(sx, v, m[:, 0, 1])  # x_in = x + v * y
    m[:, 1, 0] = torch.where(sy, v, m[:, 1, 0])  # y_in = v * x + y
    m[:, 0, 2] = torch.where(tx, v * w, m[:, 0, 2])  # x_in = x + v * W
    m[:, 1, 2] = torch.where(ty, v * h, m[:, 1, 2])
    # rotate counter-clockwise by v degrees about the centre: input = R(v)^T (out - c) + c
    a = torch.deg2rad(v)
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = w / 2.0, h / 2.0
    rm = torch.stack(
        [
            torch.stack([cos, -sin, cx - cos * cx + sin * cy], dim=1),
            torch.stack([sin, cos, cy - sin * cx - cos * cy], dim=1),
        ],
        dim=1,
    )
    return torch.where(rot.view(n, 1, 1), rm, m)


def _warp(x: Tensor, inv: Tensor) -> Tensor:
    """Nearest-neighbour inverse warp with black outside (PIL's transform with NEAREST)."""
    b, c, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=inv.dtype) + 0.5
    xs = torch.arange(w, device=x.device, dtype=inv.dtype) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    ones = torch.ones(h * w, device=x.device, dtype=inv.dtype)
    pts = torch.stack([gx.flatten(), gy.flatten(), ones], dim=0)
    src = inv @ pts  # (B, 2, H*W)
    ix = torch.floor(src[:, 0])
    iy = torch.floor(src[:, 1])
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    lin = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).long()
    out = torch.gather(x.reshape(b, c, h * w), 2, lin[:, None, :].expand(b, c, h * w))
    return torch.where(inside[:, None, :], out, torch.zeros_like(out)).view(b, c, h, w)


# ---------------------------------------------------------------- the view
def _one_op(x: Tensor, op: Tensor, mag: Tensor) -> Tensor:
    """Apply each sample's op `op[i]` with uniform draw `mag[i]` (float images in 0..255)."""
    lo = torch.tensor([RANGES[o][0] for o in OPS], device=x.device)
    hi = torch.tensor([RANGES[o][1] for o in OPS], device=x.device)
    v = lo[op] + (hi[op] - lo[op]) * mag
    b, _, h, w = x.shape
    grey = _grey(x)
    results = {
        "autocontrast": lambda: _autocontrast(x),
        "brightness": lambda: _blend(torch.zeros_like(x), x, v),
        "color": lambda: _blend(grey.expand_as(x), x, v),
        "contrast": lambda: _blend(
            torch.floor(grey.mean(dim=(1, 2, 3), keepdim=True) + 0.5).expand_as(x), x, v
        ),
        "equalize": lambda: _equalize(x),
        "posterize": lambda: _posterize(x, v),
        "sharpness": lambda: _blend(_smooth(x), x, v),
        "solarize": lambda: _solarize(x, v),
    }
    out = x
    for name, fn in results.items():
        sel = op == OPS.index(name)
        out = torch.where(sel.view(b, 1, 1, 1), fn(), out)
    geometric = torch.zeros_like(op, dtype=torch.bool)
    for name in GEOMETRIC:
        geometric |= op == OPS.index(name)
    warped = _warp(x, _inverse_affine(op, v, h, w))
    return torch.where(geometric.view(b, 1, 1, 1), warped, out)


def _cutout(x: Tensor, p: StrongParams) -> Tensor:
    """A filled square of side v = cut * W at a uniform centre, clipped (FixMatch's CutoutAbs)."""
    b, c, h, w = x.shape
    side = p.cut * w
    x0 = (p.cut_x * w - side / 2).clamp_min(0).floor()
    y0 = (p.cut_y * h - side / 2).clamp_min(0).floor()
    x1 = torch.minimum(x0 + side, torch.full_like(side, w))
    y1 = torch.minimum(y0 + side, torch.full_like(side, h))
    cols = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    rows = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
    box = (
        (cols >= x0.view(b, 1, 1))
        & (cols <= x1.view(b, 1, 1))
        & (rows >= y0.view(b, 1, 1))
        & (rows <= y1.view(b, 1, 1))
        & (side > 0).view(b, 1, 1)
    )
    fill = torch.tensor(CUTOUT_FILL[:c] if c == 3 else CUTOUT_FILL[:1] * c, device=x.device)
    return torch.where(box[:, None], fill.to(x.dtype).view(1, c, 1, 1), x)


def rand_augment_u8(images: Tensor, params: StrongParams) -> Tensor:
    """uint8 (B, C, H, W) -> NUM_OPS random ops then a cutout, uint8 (B, C, H, W)."""
    if images.dtype != torch.uint8:
        raise ValueError("rand_augment_u8 expects uint8 images")
    x = images.float()
    for k in range(params.ops.shape[1]):
        x = _one_op(x, params.ops[:, k], params.mags[:, k])
    x = _cutout(x, params)
    return x.to(torch.uint8)


class StrongTransform:
    """The strong ops as a torchvision-style transform on one uint8 (C, H, W) tensor.

    Its draws come from torch's global RNG, which the DataLoader path seeds per epoch and
    worker, so a DataLoader run is as reproducible as a device-loader run.
    """

    def __call__(self, img: Tensor) -> Tensor:
        return rand_augment_u8(img.unsqueeze(0), draw_params(1)).squeeze(0)

    def __repr__(self) -> str:
        return f"StrongTransform(n={NUM_OPS}, ops={len(OPS)}, cutout<{CUTOUT_MAX})"


def magnitude(op: str, u: float) -> float:
    """The op's value for a uniform draw u (what the docstring's table means), for tests."""
    lo, hi = RANGES[op]
    return lo + (hi - lo) * u


__all__ = [
    "OPS",
    "RANGES",
    "NUM_OPS",
    "StrongParams",
    "StrongTransform",
    "draw_params",
    "rand_augment_u8",
    "magnitude",
]
