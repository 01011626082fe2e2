"""Plain result objects returned by the engine; any caller (CLI, study, notebook) can store them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ProbeResult:
    """Paired with/without-branch gradient probe on identical weights and batches (DESIGN.md §4)."""

    fix: str
    scale: float | None
    step: int
    grad_norm_without: float  # median over batches of ||grad_A L|| with the branch bypassed
    grad_norm_with: float  # median over batches of ||grad_A L|| with the branch active
    grad_ratio: float  # median of per-batch ratios with/without
    grad_ratio_ci: tuple[float, float]  # bootstrap 95% CI of that median
    grad_ratio_layers: float  # same ratio restricted to the per-block adapters (no projections)
    grad_share: float  # median of ||g_A||^2 / (||g_A||^2 + ||g_X||^2)
    grad_norm_branch: float  # median ||grad_X L||, X = branch + join parameters
    norm_inflation: float  # mean over tokens of |x + join(c)| / |x| at the injection point
    loss_with: float  # mean loss over the probe batches, branch active
    loss_without: float  # same, branch bypassed
    feature_cosine: float  # mean cosine of final-level features with vs without the branch
    per_batch_ratios: list[float]
    threshold: float
    verdict: str  # "OK" if grad_ratio >= threshold else "CAUTION"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grad_ratio_ci"] = list(self.grad_ratio_ci)
        return d


@dataclass
class TrainResult:
    """One short training run: summary numbers plus the per-step series and probe points."""

    fix: str
    scale: float | None
    seed: int
    steps: int
    device: str
    loss_first: float  # mean loss over the first 10% of steps
    loss_last: float  # mean loss over the last 10% of steps
    loss_slope: float  # least-squares slope after warm-up, loss per 100 steps (negative = learning)
    grad_ratio_init: float  # probe ratio at step 0
    grad_ratio_final: float  # probe ratio at the last probe point
    grad_ratio_mean: float  # mean of the probe ratios over all probe points (step 0 included)
    wall_s: float
    steps_per_s: float  # training steps per second, probes excluded
    peak_mem_mb: float  # CUDA: max allocated; CPU: process peak RSS
    metrics: dict[str, list[float]] = field(default_factory=dict)  # name -> value per step
    probes: list[ProbeResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The scalar fields only (what a table row or the CLI's --json shows)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("metrics", "probes")}
        p0 = self.probes[0] if self.probes else None
        d["grad_ratio_init_ci"] = list(p0.grad_ratio_ci) if p0 else None
        return d
