"""Experts in eigen form: ``fc1_e = U_e diag(s_e) V_eᵀ`` with orthonormal bases ``U_e``, ``V_e``.

Keeping the bases orthonormal
-----------------------------
Two interchangeable mechanisms (``orthogonalization=``):

* ``"qr"`` (default): ``V`` and ``U`` are unconstrained parameters; every forward uses their Q
  factor (batched ``torch.linalg.qr``, signs fixed so ``diag(R) >= 0``). The retraction is
  idempotent, so an orthonormal raw matrix maps to itself. That is the common case (training
  calls :meth:`EigenExperts.orthonormalize_` after every optimiser step), so :meth:`bases` first
  checks ``max |BᵀB - I| <= ORTHONORMAL_TOL`` machine epsilons of the dtype (a small ``(e, r, r)``
  matmul; a QR output in float32 or float64 measures 3-11 epsilons) and then skips the
  factorisation: the forward returns ``B`` itself, which equals its Q factor to that tolerance
  (``R = chol(BᵀB)`` is then ``I`` to the same order), and the backward applies the exact
  derivative of the Q factor at ``R = I``, ``∂L/∂B = G - B·sym(BᵀG)`` with ``sym`` keeping the
  upper triangle and mirroring it. Gradients therefore equal those through ``torch.linalg.qr`` up
  to float rounding (tests check 1e-5); the forward saves the QR and its backward (~3 ms of a
  70 ms layer step at d=256, e=8).
* ``"parametrization"``: ``torch.nn.utils.parametrizations.orthogonal`` (Householder map, no
  trivialization, so no ``(e, h, h)`` base buffer). The Householder map reads the sign of the
  stored diagonal with ``int()``; AdamW's weight decay shrinks that diagonal from -1 towards 0 and
  the map then silently returns zero columns (we measured ``|UᵀU - I| = 1`` after 20 AdamW steps
  with lr=1). A tiny parametrization in front pins the diagonal to ±1.

Either way the state dict holds the orthonormal matrices under the keys ``V`` and ``U`` (a
state-dict post-hook writes them; a load pre-hook maps them back for the parametrization), so
checkpoints are interchangeable between the two mechanisms and ``BᵀB = I`` holds in the file.
:meth:`EigenExperts.orthonormalize_` copies the orthonormal matrices into the raw parameters (call
it after optimiser steps to keep them well conditioned; forwards are orthonormal regardless).

Speed of both bases, forward + backward, single-thread CPU time (best of 7; torch 2.13, d=256):

========================  ========  =====================
bases                     ``"qr"``  ``"parametrization"``
========================  ========  =====================
e=8, r=32, h=795          2.4 ms    430 ms
e=16, r=16, h=842         1.7 ms    880 ms
========================  ========  =====================

so ``"qr"`` is the default.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from ermoe_ba.layers._checks import check_choice, check_positive_int
from ermoe_ba.layers.experts import ExpertBank, ExpertWeights, _uniform_
from ermoe_ba.layers.losses import orthogonality_penalty

__all__ = [
    "ORTHOGONALIZATIONS",
    "ORTHONORMAL_TOL",
    "EigenExperts",
    "default_expert_rank",
    "orthonormal_factor",
    "orthonormalize_",
    "qr_retract",
    "retract",
]

ORTHOGONALIZATIONS = ("qr", "parametrization")
ORTHONORMAL_TOL = 32  # machine epsilons: max |BᵀB - I| under which "qr" bases skip the factorisation


def default_expert_rank(dim: int, num_experts: int) -> int:
    """``dim // num_experts`` (so the bases can tile R^dim), at least 1."""
    return max(1, dim // num_experts)


def qr_retract(matrix: torch.Tensor) -> torch.Tensor:
    """Orthonormal Q factor of a (batch of) tall matrix ``(..., m, r)``, with ``diag(R) >= 0``.

    Examples
    --------
    >>> q = qr_retract(torch.randn(3, 8, 2))
    >>> torch.allclose(q.mT @ q, torch.eye(2).expand(3, 2, 2), atol=1e-5)
    True
    """
    q, r = torch.linalg.qr(matrix)
    sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return q * sign.unsqueeze(-2)


class _AtOrthonormalPoint(torch.autograd.Function):
    """Identity on an orthonormal ``B`` with the backward of its QR retraction (``R = I`` there).

    With ``B = QR``, ``R = I``: ``dB = dQ + B dR`` and ``BᵀdQ`` is skew, so the strictly lower
    triangle of ``BᵀdB`` is that of ``BᵀdQ``. The vector-Jacobian product is then
    ``G - B (triu(H) + triu(H, 1)ᵀ)`` with ``H = BᵀG``.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, basis: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(basis)
        return basis.view_as(basis)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (basis,) = ctx.saved_tensors
        h = basis.mT @ grad  # (..., r, r)
        fused = torch.baddbmm if basis.dim() == 3 else torch.addmm  # G - B S in one pass over the tall matrices
        return fused(grad, basis, h.triu() + h.triu(1).mT, alpha=-1)


def _tolerance(dtype: torch.dtype) -> float:
    return ORTHONORMAL_TOL * torch.finfo(dtype).eps


def _is_orthonormal(basis: torch.Tensor) -> bool:
    with torch.no_grad():
        return _deviation(basis.mT @ basis) <= _tolerance(basis.dtype)


def _deviation(gram: torch.Tensor) -> float:
    """``max |G - I|`` of a batch of Gram matrices."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return float((gram - eye).abs().max())


@torch.no_grad()
def orthonormal_factor(matrix: torch.Tensor) -> torch.Tensor | None:
    """The Q factor of :func:`qr_retract` without autograd, or None if ``matrix`` is already orthonormal.

    "Already orthonormal" is the test :func:`retract` applies (``ORTHONORMAL_TOL``), so leaving such
    a matrix as it is changes nothing downstream. Near the manifold (``max |BᵀB - I| < 1/2``, e.g.
    an optimiser step away) Q comes from one pass of Cholesky QR: ``R = chol(BᵀB)ᵀ`` has a positive
    diagonal, so ``B R⁻¹`` is the same Q factor as the sign-fixed Householder QR, for a
    ``(r, m) x (m, r)`` Gram product (needed for the test anyway), a Cholesky factorisation and a
    triangular inverse of ``(r, r)`` and a ``(m, r) x (r, r)`` product instead of a Householder
    factorisation (``V`` and ``U`` of the layer benchmark an optimiser step away: 0.41 against
    3.0 ms on two threads, 0.51 against 1.14 ms on one). One pass leaves ``QᵀQ`` within
    ``cond(B)²`` times a few machine epsilons of ``I``: 4-6 epsilons measured for tall shapes up to
    ``(1024, 64)`` from any start error below 1/2. The result is not tested again here:
    :meth:`EigenExperts.bases` tests it before every use and retracts it by Householder QR in the
    rare case (an ill-conditioned ``B``) that it missed ``ORTHONORMAL_TOL``. Farther from the
    manifold, or if the factorisation fails, this returns :func:`qr_retract`.

    Examples
    --------
    >>> b = qr_retract(torch.randn(2, 9, 3)) + 1e-3 * torch.randn(2, 9, 3)
    >>> torch.allclose(orthonormal_factor(b), qr_retract(b), atol=1e-5)
    True
    >>> orthonormal_factor(qr_retract(b)) is None
    True
    """
    gram = matrix.mT @ matrix
    error = _deviation(gram)
    if error <= _tolerance(matrix.dtype):
        return None
    if error < 0.5:
        factor, info = torch.linalg.cholesky_ex(gram)
        if not bool(info.any()):
            # B R⁻¹ as a matmul with the small (r, r) inverse: on two threads a third of the time
            # of solve_triangular on the tall (m, r) matrix, and as orthonormal near the manifold
            eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device).expand_as(factor)
            return matrix @ torch.linalg.solve_triangular(factor.mT, eye, upper=True)
    return qr_retract(matrix)


def retract(matrix: torch.Tensor) -> torch.Tensor:
    """:func:`qr_retract`, but an already orthonormal ``matrix`` (``ORTHONORMAL_TOL``) skips the QR.

    Forward and backward equal those of :func:`qr_retract` to float rounding.
    """
    if _is_orthonormal(matrix):
        return _AtOrthonormalPoint.apply(matrix)
    return qr_retract(matrix)


class _SignDiagonal(nn.Module):
    """Pins the diagonal of the Householder representation to ±1 (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)
        diag = torch.diagonal(x, dim1=-2, dim2=-1).unsqueeze(-2)
        sign = torch.where(diag > 0, 1.0, -1.0).to(x.dtype)
        return x * (1 - eye) + eye * sign

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _SplitBlocks(nn.Module):
    """``(d, e*r)`` with orthonormal columns -> ``(e, d, r)`` mutually orthogonal blocks."""

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "d (e r) -> e d r", e=self.num_experts)

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "e d r -> d (e r)")


class EigenExperts(ExpertBank):
    """``e`` experts ``W2_e act(U_e diag(s_e) V_eᵀ x + b1_e) + b2_e`` with orthonormal ``U_e, V_e``.

    Axis letters: ``n`` tokens, ``e`` experts, ``d`` token width, ``r`` basis rank, ``h`` hidden.

    Parameters
    ----------
    num_experts
        Number of experts ``e``.
    dim
        Token width ``d``.
    hidden_features
        Hidden width ``h`` of every expert (``>= r``).
    expert_rank
        Basis rank ``r`` (default ``dim // num_experts``, at least 1); must be ``< dim``.
    disjoint_bases
        Keep the ``e`` input bases mutually orthogonal (needs ``e * r <= d``).
    orthogonalization
        ``"qr"`` (default) or ``"parametrization"``; see the module docstring.
    act_layer
        Activation class.

    Examples
    --------
    >>> experts = EigenExperts(4, 16, 32)
    >>> x = torch.randn(5, 16)
    >>> experts.project(x).shape  # (n, e, r): the projections the router also reads
    torch.Size([5, 4, 4])
    >>> v, u = experts.bases()
    >>> torch.allclose(v.mT @ v, torch.eye(4).expand(4, 4, 4), atol=1e-5)
    True
    """

    per_expert_inputs = True

    def __init__(
        self,
        num_experts: int,
        dim: int,
        hidden_features: int,
        expert_rank: int | None = None,
        disjoint_bases: bool = False,
        orthogonalization: str = "qr",
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        e = self.num_experts = check_positive_int("num_experts", num_experts)
        d = self.dim = check_positive_int("dim", dim)
        h = self.hidden_features = check_positive_int("hidden_features", hidden_features)
        r = self.expert_rank = check_positive_int(
            "expert_rank", default_expert_rank(d, e) if expert_rank is None else expert_rank
        )
        if r >= d:
            raise ValueError(
                f"expert_rank={r} must be smaller than dim={d}: with r >= d every basis spans the whole "
                "token space, so the eigenbasis score ||V_e^T x|| / ||x|| is 1 for every token and expert "
                f"and routing collapses. Use expert_rank < {d} (default dim // num_experts = {d // e or 1})."
            )
        if r > h:
            raise ValueError(f"hidden_features={h} must be >= expert_rank={r} (U_e is h x r with orthonormal columns).")
        if disjoint_bases and e * r > d:
            raise ValueError(
                f"disjoint_bases=True needs num_experts * expert_rank <= dim, got {e} * {r} > {d}; "
                "lower expert_rank or set disjoint_bases=False."
            )
        self.disjoint_bases = disjoint_bases
        self.orthogonalization = check_choice("orthogonalization", orthogonalization, ORTHOGONALIZATIONS)

        if disjoint_bases:
            v = rearrange(qr_retract(torch.randn(d, e * r)), "d (e r) -> e d r", e=e)
        else:
            v = qr_retract(torch.randn(e, d, r))
        self.V = nn.Parameter(v)  # (e, d, r)
        self.U = nn.Parameter(qr_retract(torch.randn(e, h, r)))  # (e, h, r)
        self.log_s = nn.Parameter(torch.zeros(e, r))
        self.b1 = nn.Parameter(_uniform_(torch.empty(e, h), r))
        self.W2 = nn.Parameter(_uniform_(torch.empty(e, h, d), h))  # (e, h, d)
        self.b2 = nn.Parameter(_uniform_(torch.empty(e, d), h))
        self.act = act_layer()
        if self.orthogonalization == "parametrization":
            self._parametrize()
        self.register_state_dict_post_hook(_save_orthonormal_bases)
        self.register_load_state_dict_pre_hook(_load_orthonormal_bases)

    def _parametrize(self) -> None:
        v, u = self.V.detach().clone(), self.U.detach().clone()
        if self.disjoint_bases:
            del self.V
            self.V = nn.Parameter(rearrange(v, "e d r -> d (e r)"))
        for name in ("V", "U"):
            parametrize.register_parametrization(self, name, _SignDiagonal())
            parametrizations.orthogonal(self, name, orthogonal_map="householder", use_trivialization=False)
        if self.disjoint_bases:
            parametrize.register_parametrization(self, "V", _SplitBlocks(self.num_experts), unsafe=True)
        with torch.no_grad():
            self.V, self.U = v, u

    def bases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The orthonormal bases ``V`` ``(e, d, r)`` and ``U`` ``(e, h, r)`` (differentiable)."""
        if self.orthogonalization == "parametrization":
            return self.V, self.U
        if self.disjoint_bases:
            v = rearrange(retract(rearrange(self.V, "e d r -> d (e r)")), "d (e r) -> e d r", e=self.num_experts)
        else:
            v = retract(self.V)
        return v, retract(self.U)

    @torch.no_grad()
    def orthonormalize_(self) -> None:
        """Replace the raw bases by their orthonormal versions in place (e.g. after ``optimizer.step()``).

        With ``"qr"`` this is :func:`orthonormal_factor` (the Q factor :meth:`bases` would use;
        bases already orthonormal to ``ORTHONORMAL_TOL`` are left as they are).
        """
        if self.orthogonalization == "parametrization":
            v, u = self.bases()
            self.V, self.U = v.clone(), u.clone()  # re-trivialises around the current point
            return
        raw_v = rearrange(self.V, "e d r -> d (e r)") if self.disjoint_bases else self.V
        for raw, param in ((raw_v, self.V), (self.U, self.U)):
            q = orthonormal_factor(raw)
            if q is not None:
                param.copy_(rearrange(q, "d (e r) -> e d r", e=self.num_experts) if raw is not param else q)

    def project(self, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """``V_eᵀ x`` for all experts at once: ``(n, d)`` -> ``(n, e, r)`` in one matmul.

        Pass ``v`` from :meth:`bases` to avoid retracting twice in one forward.
        """
        v = self.bases()[0] if v is None else v
        return (x @ rearrange(v, "e d r -> d (e r)")).unflatten(-1, (self.num_experts, self.expert_rank))

    def expert_weights(self, u: torch.Tensor | None = None) -> ExpertWeights:
        """Batched weights; ``fc1_weight`` is ``(U_e diag(s_e))ᵀ`` ``(e, r, h)``, applied to ``V_eᵀ x``."""
        u = self.bases()[1] if u is None else u
        fc1 = (u * self.log_s.exp().unsqueeze(1)).mT.contiguous()  # (e, r, h)
        return ExpertWeights(fc1, self.b1, self.W2, self.b2)

    def forward_expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        v, u = self.bases()
        fc1 = u[index] @ torch.diag(self.log_s[index].exp()) @ v[index].mT  # (h, d), rank r
        return self.act(x @ fc1.mT + self.b1[index]) @ self.W2[index] + self.b2[index]

    def orthogonality_penalty(self) -> torch.Tensor:
        """``Σ ||BᵀB - I||²_F`` over the raw ``V`` and ``U`` (keeps them well conditioned for QR)."""
        if self.orthogonalization == "parametrization":
            v, u = self.bases()
        else:
            v, u = self.V, self.U
        if self.disjoint_bases:
            v = rearrange(v, "e d r -> d (e r)")
        return orthogonality_penalty(v) + orthogonality_penalty(u)

    def active_parameter_count(self, top_k: int) -> int:
        # every token is projected on all e bases (the router needs every score)
        e, d, r, h = self.num_experts, self.dim, self.expert_rank, self.hidden_features
        return e * d * r + top_k * (r + h * r + h + h * d + d)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, dim={self.dim}, hidden_features={self.hidden_features}, "
            f"expert_rank={self.expert_rank}, disjoint_bases={self.disjoint_bases}, "
            f"orthogonalization={self.orthogonalization!r}"
        )


def orthonormalize_(model: nn.Module) -> int:
    """Call :meth:`EigenExperts.orthonormalize_` on every eigen expert bank in ``model``.

    Meant to run after ``optimizer.step()``; returns the number of banks updated.
    """
    banks = [m for m in model.modules() if isinstance(m, EigenExperts)]
    for bank in banks:
        bank.orthonormalize_()
    return len(banks)


def _save_orthonormal_bases(module: EigenExperts, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    with torch.no_grad():
        v, u = module.bases()
    for key in [k for k in state_dict if k.startswith(prefix + "parametrizations.")]:
        del state_dict[key]
    state_dict[prefix + "V"] = v.detach().clone()
    state_dict[prefix + "U"] = u.detach().clone()


def _load_orthonormal_bases(module: EigenExperts, state_dict: dict, prefix: str, *args: object) -> None:
    if module.orthogonalization != "parametrization":
        return
    for name in ("V", "U"):
        key = prefix + name
        if key not in state_dict:
            continue  # load_state_dict reports the missing key itself
        value = state_dict.pop(key)
        with torch.no_grad():
            setattr(module, name, value.to(dtype=module.log_s.dtype, device=module.log_s.device))
        sub = module.parametrizations[name].state_dict(prefix=f"{prefix}parametrizations.{name}.")
        state_dict.update(sub)
