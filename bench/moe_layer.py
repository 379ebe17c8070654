"""Benchmark one MoE feed-forward layer against a dense MLP with the same active parameters.

Forward + backward wall time on CPU (2 threads), embed_dim 256, 4096 tokens, top_k 2, for
num_experts 8 and 16. Every model gets the active parameters per token of the dense
``Mlp(256, 1024)``: expert widths come from :func:`ermoe_ba.layers.equal_active_hidden`
(Mixtral's SwiGLU experts have three matrices, so their width is solved separately). Cases run
interleaved (one repeat of each per round) so load from other processes hits all alike, in a new
random order every round (seeded): a case's time depends on which case ran before it (cache and
allocator state); in a fixed order, reordering alone moved ERMoE/softmax from 0.99 to 1.03 in one
session. Medians are reported. Because a shared machine distorts 2-thread wall times (every
parallel region waits for a descheduled thread), the E=8 fast paths are also timed as
single-thread CPU time, and the script can wait for a quiet machine first.

The C heap is pinned first (:func:`_pin_glibc_heap`): by default glibc returns freed memory to the
system and moves its mmap threshold as blocks are freed, so whether a case's multi-MB buffers came
back as fresh pages (thousands of page faults per step, tens of ms here) depended on the case
before it, and the dense MLP's median ranged over 64-121 ms between runs. With the heap pinned,
every case reuses its memory after the warm-up, as in a training loop.

Prints one JSON line and writes it to bench/results/moe_layer.json.

What one ERMoE step times: ``experts.orthonormalize_()`` + forward + backward. Before each timed
step (untimed) the raw bases get a small random move, standing in for the optimiser step, so
``orthonormalize_`` does the retraction training pays after every step (a Cholesky QR of bases an
optimiser step away from the manifold, see ``ermoe_ba.layers.eigen_experts``). The forward then
starts from orthonormal bases and skips the QR factorisation, as in training (the backward still
applies QR's exact derivative). Dense and softmax steps are forward + backward (they have nothing
to retract). ``orthogonalization_ms_fwd_bwd`` times ``bases()`` forward + backward on raw bases
moved off the manifold (the full QR path, which training never takes after the first step).
``E8_orthonormality_ms`` is the ERMoE step minus that of a copy reading its raw bases as they are
(no retraction, no check, no QR-point backward): what keeping the bases orthonormal costs.

    python bench/moe_layer.py [--quick] [--repeats N] [--wait-quiet SECONDS] [--no-save]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _report import machine
from torch import nn

from ermoe_ba.layers import EigenExperts, Mlp, MoELayer, active_parameter_count, equal_active_hidden, qr_retract

EMBED_DIM, TOKENS, TOP_K, DENSE_HIDDEN, EXPERTS = 256, 4096, 2, 1024, (8, 16)
RESULT = Path(__file__).resolve().parent / "results" / "moe_layer.json"


class _Step:
    """One training step of ``module`` minus the optimiser: forward + backward (+ ERMoE retraction).

    For ERMoE, :meth:`setup` (not timed) moves the raw bases off the manifold the way an optimiser
    step does, so the timed ``orthonormalize_`` does the real per-step work training pays; the
    following forward then starts from orthonormal bases, as in training.
    """

    def __init__(self, module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
        self.module, self.x, self.grad = module, x, grad
        experts = getattr(module, "experts", None)
        self.experts = experts if isinstance(experts, EigenExperts) else None
        self.noise = torch.Generator().manual_seed(1)

    def setup(self) -> None:
        if self.experts is not None:
            with torch.no_grad():
                for raw in (self.experts.V, self.experts.U):
                    raw.add_(torch.randn(raw.shape, generator=self.noise), alpha=1e-4)

    def __call__(self) -> None:
        if self.experts is not None:  # what training runs after optimizer.step() (ermoe_ba.training.loop)
            self.experts.orthonormalize_()
        for p in self.module.parameters():
            p.grad = None
        out = self.module(self.x)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(self.grad)


def _without_orthonormality(layer: MoELayer) -> MoELayer:
    """Diagnostic: ``layer`` reading its raw bases as they are (no retraction, check or QR-point backward).

    Not a valid ERMoE layer; its time against ``ermoe_sorted`` is what keeping the bases
    orthonormal costs per step (``E8_orthonormality_ms``).
    """
    experts = layer.experts
    experts.bases = lambda: (experts.V, experts.U)
    experts.orthonormalize_ = lambda: None
    return layer


def _mixtral(num_experts: int) -> tuple[nn.Module | None, str]:
    try:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    except ImportError as error:
        return None, f"transformers is not importable ({error}); it is not a project dependency"
    dense = 2 * EMBED_DIM * DENSE_HIDDEN + DENSE_HIDDEN + EMBED_DIM
    # router d*e plus k SwiGLU experts of 3*d*h parameters (no biases)
    hidden = round((dense - EMBED_DIM * num_experts) / (3 * EMBED_DIM * TOP_K))
    config = MixtralConfig(
        hidden_size=EMBED_DIM, intermediate_size=hidden, num_local_experts=num_experts, num_experts_per_tok=TOP_K
    )
    # transformers >= 5 picks the experts' kernel by this attribute; on CPU only its per-expert loop
    # ("eager") is usable: "grouped_mm" needs 16-byte aligned strides, "batched_mm" took 44 s a step
    config._experts_implementation = "eager"
    import transformers

    note = f"transformers {transformers.__version__}, eager experts, SwiGLU width {hidden}"
    return MixtralSparseMoeBlock(config), note


def _time_cases(
    cases: dict[str, Callable[[], None]], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    for run in cases.values():
        run()  # warm-up: allocator, thread pool, first-call dispatch
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            run = cases[name]
            if isinstance(run, _Step):
                run.setup()
            start = clock()
            run()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _orthogonalization_ms(num_experts: int, hidden: int, repeats: int) -> dict[str, float]:
    def run(bank: EigenExperts) -> Callable[[], None]:
        def step() -> None:
            bank.zero_grad(set_to_none=True)
            v, u = bank.bases()
            (v.sum() + u.sum()).backward()

        return step

    banks = {
        mode: EigenExperts(num_experts, EMBED_DIM, hidden, orthogonalization=mode) for mode in ("qr", "parametrization")
    }
    with torch.no_grad():  # off the manifold, as after an optimiser step: the full QR path
        banks["qr"].V.add_(1e-3 * torch.randn_like(banks["qr"].V))
        banks["qr"].U.add_(1e-3 * torch.randn_like(banks["qr"].U))
    medians = _time_cases({mode: run(bank) for mode, bank in banks.items()}, repeats)
    return {mode: round(seconds * 1e3, 3) for mode, seconds in medians.items()}


def _retraction_ms(num_experts: int, hidden: int, repeats: int) -> dict[str, float]:
    """Single-thread CPU ms of the per-step retraction: Cholesky QR (``orthonormalize_``) vs Householder."""
    bank = EigenExperts(num_experts, EMBED_DIM, hidden)
    noise = torch.Generator().manual_seed(2)
    times: dict[str, list[float]] = {"orthonormalize_": [], "householder_qr": []}
    for _ in range(repeats):
        for name in times:
            with torch.no_grad():
                for raw in (bank.V, bank.U):
                    raw.add_(torch.randn(raw.shape, generator=noise), alpha=1e-4)
                start = time.process_time()
                if name == "orthonormalize_":
                    bank.orthonormalize_()
                else:
                    bank.V.copy_(qr_retract(bank.V))
                    bank.U.copy_(qr_retract(bank.U))
                times[name].append(time.process_time() - start)
    return {name: round(statistics.median(values) * 1e3, 3) for name, values in times.items()}


def _pin_glibc_heap() -> str:
    """Keep freed C-heap memory in the process (glibc ``mallopt``); returns what was set, for the record."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default (not glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    # the largest mmap threshold glibc accepts on 64-bit; a fixed value also stops its dynamic adjustment
    pinned = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    return "glibc mallopt: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB" if pinned else "default (mallopt refused)"


def _wait_for_quiet(max_seconds: float, threshold: float = 1.0) -> float:
    start = time.monotonic()
    while os.getloadavg()[0] > threshold and time.monotonic() - start < max_seconds:
        time.sleep(15)
    return round(time.monotonic() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of the default")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to this long for load < 1")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULT.name}")
    parser.add_argument("--note", default="", help="free text stored in the result (e.g. how it was launched)")
    args = parser.parse_args()
    allocator = _pin_glibc_heap()
    repeats = 3 if args.quick else args.repeats
    waited = _wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else 0.0
    torch.manual_seed(0)
    x = torch.randn(4, TOKENS // 4, EMBED_DIM, requires_grad=True)
    grad = torch.randn_like(x)

    report: dict[str, object] = {
        "command": (f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else "")
        + "python "
        + shlex.join(["bench/moe_layer.py", *sys.argv[1:]]),
        "torch": torch.__version__,
        "machine": machine(),
        "threads": 2,
        "tokens": TOKENS,
        "embed_dim": EMBED_DIM,
        "top_k": TOP_K,
        "repeats": repeats,
        "unit": "seconds, median of forward+backward (ERMoE: orthonormalize_ of bases moved off the manifold "
        "by an untimed small random step, then forward+backward)",
        "dense": f"Mlp({EMBED_DIM}, hidden_features={DENSE_HIDDEN}); MoE expert widths from equal_active_hidden",
        "waited_for_quiet_s": waited,
        "allocator": allocator,
        "note": args.note,
        "load_average_before": round(os.getloadavg()[0], 2),
    }
    mixtral_notes: dict[str, str] = {}
    fast: dict[str, nn.Module] = {}
    for num_experts in EXPERTS:
        torch.set_num_threads(2)
        h_ermoe = equal_active_hidden(EMBED_DIM, DENSE_HIDDEN, num_experts, TOP_K, "ermoe")
        h_softmax = equal_active_hidden(EMBED_DIM, DENSE_HIDDEN, num_experts, TOP_K, "softmax")
        modules: dict[str, nn.Module] = {"dense": Mlp(EMBED_DIM, DENSE_HIDDEN)}
        for router, hidden in (("softmax", h_softmax), ("ermoe", h_ermoe)):
            for dispatch in ("eager", "sorted"):
                modules[f"{router}_{dispatch}"] = MoELayer(
                    EMBED_DIM, hidden, num_experts, TOP_K, router=router, dispatch=dispatch
                )
        if num_experts == 8:  # context: softmax experts as wide as the ERMoE ones (more active parameters)
            modules["softmax_sorted_ermoe_width"] = MoELayer(EMBED_DIM, h_ermoe, num_experts, TOP_K, router="softmax")
            modules["ermoe_sorted_raw_bases"] = _without_orthonormality(copy.deepcopy(modules["ermoe_sorted"]))
            fast = {name: modules[name] for name in ("dense", "softmax_sorted", "ermoe_sorted")}
        block, mixtral_notes[f"E{num_experts}"] = _mixtral(num_experts)
        if block is not None:
            modules["mixtral"] = block
        medians = _time_cases({name: _Step(m, x, grad) for name, m in modules.items()}, repeats)
        report[f"E{num_experts}"] = {
            "hidden": {"dense": DENSE_HIDDEN, "softmax": h_softmax, "ermoe": h_ermoe},
            "active_parameters": {name: active_parameter_count(m) for name, m in modules.items() if name != "mixtral"},
            "seconds": {name: round(value, 5) for name, value in medians.items()},
        }
        if num_experts == 8:
            report["ermoe_vs_dense"] = round(medians["ermoe_sorted"] / medians["dense"], 3)
            report["ermoe_vs_softmax"] = round(medians["ermoe_sorted"] / medians["softmax_sorted"], 3)
            orthonormality = medians["ermoe_sorted"] - medians["ermoe_sorted_raw_bases"]
            report["E8_orthonormality_ms"] = round(orthonormality * 1e3, 2)
            # the parametrization takes seconds per step here: a few repeats suffice
            report["orthogonalization_ms_fwd_bwd"] = _orthogonalization_ms(num_experts, h_ermoe, min(repeats, 3))

    torch.set_num_threads(1)
    report["E8_retraction_cpu_ms_1thread"] = _retraction_ms(8, fast["ermoe_sorted"].hidden_features, repeats)
    cpu = _time_cases({name: _Step(m, x, grad) for name, m in fast.items()}, repeats, time.process_time)
    report["E8_cpu_seconds_1thread"] = {name: round(value, 5) for name, value in cpu.items()}
    report["E8_cpu_1thread_ermoe_vs_dense"] = round(cpu["ermoe_sorted"] / cpu["dense"], 3)
    report["E8_cpu_1thread_ermoe_vs_softmax"] = round(cpu["ermoe_sorted"] / cpu["softmax_sorted"], 3)
    has_mixtral = any(note.startswith("transformers ") for note in mixtral_notes.values())
    report["mixtral"] = mixtral_notes if has_mixtral else None
    if not has_mixtral:
        report["mixtral_reason"] = mixtral_notes["E8"]
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    line = json.dumps(report)
    print(line)
    if not args.no_save:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(line + "\n")


if __name__ == "__main__":
    main()
