"""3D augmentation of conformed T1 volumes for brain-age training.

Two back-ends with the same knobs (:class:`AugmentConfig`):

``"fast"`` (default)
    Batched torch operations on the ``(b, 1, R, A, S)`` batch: random whole-voxel shifts (the
    translation part of a small affine, as in SFCN's training), an optional rotation/scaling
    by ``grid_sample``, a smooth multiplicative bias field, gamma and Gaussian noise inside the
    brain; intensity changes are skipped for samples that did not draw them, the bias field is
    separable (a product of three random cubics along R, A, S) and the noise is a random crop
    of a noise bank drawn once. Measured side by side on one busy CPU core, per 80x96x80
    volume: 10.6 ms, against 57 ms for a full-resolution interpolated 4x4x4 field and fresh
    ``randn`` noise; a ``grid_sample`` rotation/scaling adds ~25 ms per sample that draws it
    (the others are not resampled), so it is off by default.
``"monai"``
    MONAI's per-sample ``RandAffine``, ``RandBiasField``, ``RandAdjustContrast`` and
    ``RandGaussianNoise`` (the intensity ones inside the brain, as in the fast back-end).
    Measured ~38 ms per volume on the same CPU (RandAffine 22 ms, noise 8 ms, bias field 6.5
    ms), i.e. more than a forward + backward pass of the CPU models (3-15 ms), so it suits CUDA
    machines with spare CPU cores.

Intensities are robust z-scores with background exactly 0 (brain-masked), so the bias field
and gamma act on the brain only, on intensities shifted to be positive; left-right flips are
off by default because brain ageing is not symmetric.

Defaults: shifts only. The intensity changes (bias field, gamma, noise) are available but off,
because on the IXI development set they hurt: ERMoE-ba at 4 mm, same folds and seeds, test MAE
11.0 / 9.3 y on folds 0 / 1 with shifts + intensity changes against 7.3 / 6.1 y with shifts
alone (8.9 y on fold 0 without any augmentation); with them the training loss barely falls in
60 epochs. Gamma and a smooth bias field change grey/white-matter contrast and regional
intensity, which carry age information in conformed T1 scans, so they act as label noise here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ermoe_ba.models.config import check_choice
from ermoe_ba.training.sharpness import change_sharpness, fractional_shift

__all__ = ["AugmentConfig", "BatchAugment", "mirror_left_right", "rotate_and_zoom", "whole_voxel_shift"]


@dataclass
class AugmentConfig:
    """Augmentation settings; probabilities are per sample.

    Parameters
    ----------
    kind
        ``"fast"``, ``"monai"`` or ``"none"``.
    shift
        Maximum whole-voxel translation along each axis (fast back-end). The default, 4 voxels
        (±8 mm at the 2 mm model grid), is the recipe of the cross-validation and the bundled model.
    affine_prob, rotate_deg, scale
        Probability and range of a random rotation (degrees about each axis) and isotropic
        scaling (fraction); for ``"monai"`` also a translation of ``shift`` voxels.
    bias_prob, bias_coeff
        Smooth multiplicative bias field ``exp(f)``, ``f`` with standard deviation ``bias_coeff``.
    gamma_prob, gamma_range
        Gamma contrast change with ``gamma`` drawn log-uniformly from the range.
    noise_prob, noise_std
        Gaussian noise with standard deviation drawn from ``[0, noise_std]``.
    blur_prob, blur_variance
        Sharpness change (:func:`~ermoe_ba.training.sharpness.change_sharpness`, both back-ends):
        a variance in voxel² drawn uniformly from the range, blurring if positive, sharpening
        by an unsharp mask if negative. Off by default (see the README's probe of it).
    subvoxel_prob
        Random fractional shift, uniform in ``[-0.5, 0.5)`` voxel along each axis, by linear
        interpolation (:func:`~ermoe_ba.training.sharpness.fractional_shift`, both back-ends):
        the interpolation blur conform's resampling gives a scan at a random sub-voxel offset.
        Applied before the sharpness change. Off by default.
    flip_lr
        Mirror each sample left-right with probability 0.5 (:func:`mirror_left_right`, both
        back-ends). Off by default: ageing is asymmetric, and expert maps of a model trained on
        mirrored brains cannot show lateralised specialisation.
    """

    kind: str = "fast"
    shift: int = 4
    affine_prob: float = 0.0
    rotate_deg: float = 4.0
    scale: float = 0.04
    bias_prob: float = 0.0
    bias_coeff: float = 0.1
    gamma_prob: float = 0.0
    gamma_range: tuple[float, float] = (0.8, 1.25)
    noise_prob: float = 0.0
    noise_std: float = 0.05
    blur_prob: float = 0.0
    blur_variance: tuple[float, float] = (-0.25, 0.5)
    subvoxel_prob: float = 0.0
    flip_lr: bool = False

    def __post_init__(self) -> None:
        check_choice("augment kind", self.kind, ("fast", "monai", "none"))
        self.gamma_range = tuple(self.gamma_range)
        self.blur_variance = tuple(self.blur_variance)
        if self.blur_variance[0] > self.blur_variance[1]:
            raise ValueError(f"blur_variance must be (low, high) with low <= high, got {self.blur_variance}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


class _MonaiTransforms(NamedTuple):
    """The MONAI back-end's random transforms: spatial, intensity (applied inside the brain), flip."""

    affine: Any
    intensity: list[Any]
    flip: Any | None


def _numpy_rng_state(rng: Any) -> dict[str, Any]:
    """A NumPy RandomState's state as tensors and numbers (loadable with ``weights_only=True``)."""
    _, keys, position, has_gauss, cached = rng.get_state()
    return {"keys": torch.from_numpy(keys.astype("int64")), "pos": position, "has_gauss": has_gauss, "cached": cached}


def _numpy_rng_from_state(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype("uint32")
    return ("MT19937", keys, state["pos"], state["has_gauss"], state["cached"])


def whole_voxel_shift(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Translate each sample by whole voxels, filling with zeros: ``offsets`` is ``(b, 3)`` ints."""
    out = torch.zeros_like(x)
    for i, off in enumerate(offsets.tolist()):
        src, dst = [], []
        for d, size in zip(off, x.shape[2:], strict=True):
            src.append(slice(max(0, -d), size - max(0, d)))
            dst.append(slice(max(0, d), size - max(0, -d)))
        out[(i, slice(None), *dst)] = x[(i, slice(None), *src)]
    return out


def mirror_left_right(x: torch.Tensor) -> torch.Tensor:
    """The ``(b, 1, R, A, S)`` batch mirrored left-right (the R axis reversed).

    The conformed grid is not centred on the template's midline to the voxel, so the mirror of a
    brain may sit a voxel off its original position; training shifts cover that.

    Examples
    --------
    >>> mirror_left_right(torch.arange(3.0).view(1, 1, 3, 1, 1)).flatten().tolist()
    [2.0, 1.0, 0.0]
    """
    return x.flip(2)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """``(b, 3)`` radians -> ``(b, 3, 3)`` rotation matrices (x, then y, then z)."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def rotate_and_zoom(x: torch.Tensor, angles: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """Rotate each sample of ``x`` ``(b, c, R, A, S)`` about the grid centre and scale it by ``zoom`` ``(b,)``.

    ``angles`` ``(b, 3)`` are radians about the grid's x (S), y (A) and z (R) axes (see
    :func:`_rotation`). The rotation acts on voxel positions, so it is rigid on the isotropic
    model grid whatever the volume's extent along each axis (a rotation of ``grid_sample``'s
    normalised coordinates would shear a non-cubic grid); trilinear interpolation, zero fill.
    """
    b = x.shape[0]
    # normalised coordinate n = position / (size / 2): theta = D⁻¹ (R / zoom) D with D = diag(S, A, R)
    size = torch.tensor(x.shape[:1:-1], dtype=x.dtype, device=x.device)
    theta = _rotation(angles).to(x) / zoom.to(x).view(b, 1, 1)  # x's dtype and device
    theta = theta * size.view(1, 1, 3) / size.view(1, 3, 1)
    theta = torch.cat([theta, theta.new_zeros(b, 3, 1)], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BatchAugment:
    """Random augmentation of a ``(b, 1, R, A, S)`` float batch (see the module docstring).

    Examples
    --------
    >>> aug = BatchAugment(AugmentConfig(), seed=0)
    >>> aug(torch.zeros(2, 1, 16, 16, 16)).abs().max().item()  # background stays zero
    0.0
    """

    def __init__(self, config: AugmentConfig | None = None, seed: int = 0) -> None:
        self.config = config or AugmentConfig()
        self.generator = torch.Generator().manual_seed(seed)
        self._monai = self._build_monai(seed) if self.config.kind == "monai" else None
        self._bank: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """The random streams (this generator's, the noise bank, the MONAI transforms'), to resume a training."""
        return {
            "generator": self.generator.get_state(),
            "noise_bank": self._bank,
            "monai": [_numpy_rng_state(t.R) for t in self._monai_randomizables()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the random streams saved by :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
        self._bank = state["noise_bank"]
        transforms = self._monai_randomizables()
        if len(transforms) != len(state["monai"]):
            raise ValueError("augmentation state of another augmentation recipe")
        for transform, saved in zip(transforms, state["monai"], strict=True):
            transform.R.set_state(_numpy_rng_from_state(saved))

    def _monai_randomizables(self) -> list[Any]:
        """The MONAI transforms with a random stream, and those they hold (RandAffine's grid)."""
        if self._monai is None:
            return []
        from monai.transforms import Randomizable

        tops = [self._monai.affine, *self._monai.intensity, *([self._monai.flip] if self._monai.flip else [])]
        found = []
        for top in tops:
            found.append(top)
            found += [v for v in vars(top).values() if isinstance(v, Randomizable)]
        return found

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def _build_monai(self, seed: int) -> _MonaiTransforms:
        from monai.transforms import (
            Compose,
            RandAdjustContrast,
            RandAffine,
            RandBiasField,
            RandFlip,
            RandGaussianNoise,
        )

        c = self.config
        affine = RandAffine(
            prob=max(c.affine_prob, 1.0 if c.shift else 0.0),
            rotate_range=(math.radians(c.rotate_deg),) * 3,
            scale_range=(c.scale,) * 3,
            translate_range=(c.shift,) * 3,
            padding_mode="zeros",
        )
        intensity = [
            RandBiasField(prob=c.bias_prob, coeff_range=(0.0, c.bias_coeff)),
            RandAdjustContrast(prob=c.gamma_prob, gamma=c.gamma_range),
            RandGaussianNoise(prob=c.noise_prob, std=c.noise_std),
        ]
        # last and only when asked, so the other transforms keep their random streams
        flip = RandFlip(prob=0.5, spatial_axis=0) if c.flip_lr else None
        Compose([affine, *intensity, *([flip] if flip else [])]).set_random_state(seed=seed)  # seeds each one
        return _MonaiTransforms(affine, intensity, flip)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a batch on CPU (returned on the input's device and dtype)."""
        c = self.config
        if c.kind == "none":
            return x
        device, dtype = x.device, x.dtype
        x = x.detach().float().cpu()
        if self._monai is not None:
            out = torch.stack([self._monai_sample(sample) for sample in x]).float()
            return self._sharpness(out).to(device, dtype)
        return self._sharpness(self._fast(x)).to(device, dtype)

    def _monai_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """MONAI's transforms on one ``(1, R, A, S)`` volume, intensity changes inside the brain only.

        As in the fast back-end, bias field and gamma see intensities shifted to be positive and
        the background (zero after the affine) stays exactly 0; MONAI's own transforms would
        scale negative z-scores and lift the background (gamma rescales by the image's minimum).
        """
        c, monai = self.config, self._monai
        v = torch.as_tensor(monai.affine(sample)).as_tensor()
        if c.bias_prob or c.gamma_prob or c.noise_prob:
            mask, lo = v != 0, v.min()
            pos = v - lo
            for transform in monai.intensity:
                pos = transform(pos)
            v = (torch.as_tensor(pos).as_tensor() + lo) * mask
        return v if monai.flip is None else torch.as_tensor(monai.flip(v)).as_tensor()

    def _sharpness(self, x: torch.Tensor) -> torch.Tensor:
        """Shift by a fraction of a voxel (``subvoxel_prob``), then blur or sharpen (``blur_prob``), the
        samples that draw it, each by its own amount."""
        c, b = self.config, x.shape[0]
        # blur draws come first, so adding sub-voxel shifts leaves a blur-only recipe's stream unchanged
        blur = self._rand(b, 2) if c.blur_prob > 0 else None  # per sample: change?, variance
        shift = self._rand(b, 4) if c.subvoxel_prob > 0 else None  # per sample: shift?, three offsets
        low, high = c.blur_variance
        for i in range(b):
            if shift is not None and shift[i, 0] < c.subvoxel_prob:
                offsets = tuple(float(t) - 0.5 for t in shift[i, 1:])
                x[i : i + 1] = fractional_shift(x[i : i + 1], offsets)
            if blur is not None and blur[i, 0] < c.blur_prob:
                x[i : i + 1] = change_sharpness(x[i : i + 1], low + (high - low) * float(blur[i, 1]))
        return x

    def _fast(self, x: torch.Tensor) -> torch.Tensor:
        c, b = self.config, x.shape[0]
        if c.shift:
            offsets = torch.randint(-c.shift, c.shift + 1, (b, 3), generator=self.generator)
            x = whole_voxel_shift(x, offsets)
        if c.affine_prob > 0:
            x = self._affine(x)
        if c.flip_lr:
            flip = (self._rand(b) < 0.5).view(b, 1, 1, 1, 1)
            x = torch.where(flip, mirror_left_right(x), x)  # a new tensor: the caller's batch stays as it was
        draws = self._rand(b, 6)  # per sample: bias?, gamma?, gamma value, noise?, noise std, noise sign
        out = torch.empty_like(x)
        for i in range(b):
            out[i] = self._intensity(x[i], draws[i])
        return out

    def _intensity(self, v: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        """Bias field, gamma and noise on one ``(1, R, A, S)`` volume; only drawn changes cost time."""
        c = self.config
        use_bias, use_gamma, use_noise = (
            bool(draw[0] < c.bias_prob),
            bool(draw[1] < c.gamma_prob),
            bool(draw[3] < c.noise_prob),
        )
        if not (use_bias or use_gamma or use_noise):
            return v
        mask = v != 0
        lo = v.min()
        pos = (v - lo).clamp_(min=0)  # intensities shifted to >= 0 for multiplicative changes
        if use_bias:
            pos.mul_(self._bias_field(v.shape[1:]))
        if use_gamma:
            log_lo, log_hi = math.log(c.gamma_range[0]), math.log(c.gamma_range[1])
            gamma = math.exp(log_lo + (log_hi - log_lo) * float(draw[2]))
            top = pos.max().clamp_min(1e-6)
            pos = pos.div_(top).pow_(gamma).mul_(top)
        out = pos.add_(lo)
        if use_noise:
            out.add_(self._noise(v.shape[1:]), alpha=c.noise_std * float(draw[4]) * (1 if draw[5] < 0.5 else -1))
        return out.mul_(mask)

    def _bias_field(self, shape: torch.Size) -> torch.Tensor:
        """A smooth separable field ``exp(f(r) + g(a) + h(s))``, each a random cubic over [-1, 1]."""
        field = None
        for axis, size in enumerate(shape):
            t = torch.linspace(-1.0, 1.0, size)
            coeff = torch.randn(3, generator=self.generator) * self.config.bias_coeff
            curve = (coeff[0] * t + coeff[1] * (1.5 * t**2 - 0.5) + coeff[2] * (2.5 * t**3 - 1.5 * t)).exp()
            view = [1, 1, 1]
            view[axis] = size
            field = curve.view(view) if field is None else field * curve.view(view)
        return field

    def _noise(self, shape: torch.Size) -> torch.Tensor:
        """Unit Gaussian noise: a random crop of a noise bank drawn once (a fresh draw costs more
        than a training step of the CPU models)."""
        margin = 16
        if getattr(self, "_bank", None) is None or self._bank.shape != tuple(s + margin for s in shape):
            self._bank = torch.randn(*(s + margin for s in shape), generator=self.generator)
        o = torch.randint(0, margin + 1, (3,), generator=self.generator).tolist()
        return self._bank[o[0] : o[0] + shape[0], o[1] : o[1] + shape[1], o[2] : o[2] + shape[2]]

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        c, b = self.config, x.shape[0]
        angles = (self._rand(b, 3) * 2 - 1) * math.radians(c.rotate_deg)
        zoom = 1.0 + (self._rand(b) * 2 - 1) * c.scale
        apply = self._rand(b) < c.affine_prob
        if not bool(apply.any()):
            return x
        out = x.clone()
        out[apply] = rotate_and_zoom(x[apply], angles[apply], zoom[apply])  # the others are not resampled
        return out
