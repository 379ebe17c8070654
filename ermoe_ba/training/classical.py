"""Classical brain-age baseline: PCA + ridge regression on coarsely resampled voxels.

Conformed volumes are average-pooled to ~6 mm voxels, voxels outside the brain (zero in every
training scan) are dropped, and a scikit-learn pipeline ``StandardScaler -> PCA -> Ridge`` is
fitted with the ridge penalty chosen by an inner cross-validation on the training scans only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ermoe_ba.models import PreprocessConfig, create_model
from ermoe_ba.models.voxel_linear import VoxelLinear, pool_voxels

__all__ = ["PcaRidgeBrainAge", "downsample_voxels", "voxel_linear_from_pca_ridge"]


def downsample_voxels(volumes: torch.Tensor, factor: int) -> np.ndarray:
    """Average-pool ``(n, 1, R, A, S)`` volumes by ``factor`` and flatten to ``(n, voxels)`` float32.

    The same pooling as :class:`~ermoe_ba.models.voxel_linear.VoxelLinear`, in chunks of 16 scans.

    Examples
    --------
    >>> downsample_voxels(torch.ones(2, 1, 6, 6, 6), 3).shape
    (2, 8)
    """
    chunks = [pool_voxels(volumes[i : i + 16], factor) for i in range(0, volumes.shape[0], 16)]
    return torch.cat(chunks).numpy()


@dataclass
class PcaRidgeBrainAge:
    """PCA + ridge regression with the penalty tuned by inner K-fold CV.

    Parameters
    ----------
    factor
        Average-pooling factor of the conformed grid (3 turns 2 mm voxels into 6 mm ones).
    n_components
        PCA components (an int) or explained-variance fraction (a float below 1).
    alphas
        Ridge penalties searched by the inner cross-validation.
    inner_folds
        Folds of the inner cross-validation (training scans only).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, 40)
    >>> vols = torch.randn(40, 1, 6, 6, 6) + torch.tensor(age).view(-1, 1, 1, 1, 1) / 20
    >>> model = PcaRidgeBrainAge(factor=1, n_components=10).fit(vols, age)
    >>> float(np.abs(model.predict(vols) - age).mean()) < 5
    True
    """

    factor: int = 3
    n_components: int | float = 0.95
    alphas: tuple[float, ...] = tuple(np.logspace(-1, 5, 13).tolist())
    inner_folds: int = 5
    seed: int = 0
    search_: GridSearchCV | None = field(default=None, init=False, repr=False)
    keep_: np.ndarray | None = field(default=None, init=False, repr=False)
    n_voxels_: int = field(default=0, init=False, repr=False)

    def _pipeline(self) -> Pipeline:
        return Pipeline(
            [
                ("scale", StandardScaler()),
                ("pca", PCA(n_components=self.n_components, svd_solver="full", random_state=self.seed)),
                ("ridge", Ridge()),
            ]
        )

    def _features(self, volumes: torch.Tensor) -> np.ndarray:
        x = downsample_voxels(volumes, self.factor)
        return x[:, self.keep_] if self.keep_ is not None else x

    def fit(self, volumes: torch.Tensor, ages: ArrayLike) -> PcaRidgeBrainAge:
        """Choose the ridge penalty by inner CV on these scans, then refit on all of them."""
        ages = np.asarray(ages, dtype=np.float64)
        x = downsample_voxels(volumes, self.factor)
        self.n_voxels_ = x.shape[1]
        self.keep_ = np.flatnonzero(np.abs(x).max(axis=0) > 0)
        x = x[:, self.keep_]
        inner = KFold(self.inner_folds, shuffle=True, random_state=self.seed)
        self.search_ = GridSearchCV(
            self._pipeline(), {"ridge__alpha": list(self.alphas)}, cv=inner, scoring="neg_mean_absolute_error"
        )
        self.search_.fit(x, ages)
        return self

    def predict(self, volumes: torch.Tensor) -> np.ndarray:
        """Predicted ages of ``(n, 1, R, A, S)`` volumes."""
        if self.search_ is None:
            raise RuntimeError("PcaRidgeBrainAge.predict called before fit")
        return self.search_.predict(self._features(volumes))

    def out_of_fold(self, volumes: torch.Tensor, ages: ArrayLike) -> np.ndarray:
        """Inner-CV predictions of the fitted scans (for an age-bias correction without test data)."""
        if self.search_ is None:
            raise RuntimeError("PcaRidgeBrainAge.out_of_fold called before fit")
        inner = KFold(self.inner_folds, shuffle=True, random_state=self.seed + 1)
        return cross_val_predict(self.search_.best_estimator_, self._features(volumes), np.asarray(ages), cv=inner)

    def linear_map(self) -> tuple[np.ndarray, float]:
        """The fitted pipeline as one linear map on the pooled voxels: ``age = x @ w + b``.

        Scaling, PCA (not whitened) and ridge are all affine, so their composition is exact;
        voxels dropped at fit time get weight 0. Returns ``w`` over every pooled voxel and ``b``.
        """
        if self.search_ is None or self.keep_ is None:
            raise RuntimeError("PcaRidgeBrainAge.linear_map called before fit")
        pipe = self.search_.best_estimator_
        scale, pca, ridge = pipe.named_steps["scale"], pipe.named_steps["pca"], pipe.named_steps["ridge"]
        in_pca = pca.components_.T @ np.ravel(ridge.coef_)  # weights on the standardised voxels
        kept = in_pca / scale.scale_
        bias = float(np.ravel(ridge.intercept_)[0] - pca.mean_ @ in_pca - scale.mean_ @ kept)
        weight = np.zeros(self.n_voxels_, dtype=np.float64)
        weight[self.keep_] = kept
        return weight, bias

    @property
    def best_alpha(self) -> float:
        """The ridge penalty the inner CV chose."""
        return float(self.search_.best_params_["ridge__alpha"]) if self.search_ is not None else float("nan")


def voxel_linear_from_pca_ridge(
    model: PcaRidgeBrainAge, preprocess: PreprocessConfig, target_mean: float, target_std: float
) -> VoxelLinear:
    """A fitted PCA + ridge model as a registered ``voxel_ridge`` module on the ``preprocess`` grid.

    The module predicts the standardised age ``(age - target_mean) / target_std``, like the deep
    models, so it can join their :class:`~ermoe_ba.models.ensemble.ModelEnsemble`.
    """
    module = create_model("voxel_ridge", preprocess=preprocess, input_pool=model.factor)
    if module.weight[0].numel() != model.n_voxels_:
        raise ValueError(
            f"the PCA + ridge model was fitted on {model.n_voxels_} pooled voxels, the grid "
            f"{tuple(preprocess.grid_shape)} pooled by {model.factor} has {module.weight[0].numel()}"
        )
    weight, bias = model.linear_map()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight / target_std).view_as(module.weight))
        module.bias.fill_((bias - target_mean) / target_std)
    return module
