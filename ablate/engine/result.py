"""Plain result objects returned by the engine; any caller (CLI, study, notebook) can store them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ablate.eval import EVAL_METRICS

# Groups of adapter parameters every AA-CLIP report shows: the per-block adapters, the per-level and
# detection projections, and their union (the seed's 10.2 M-parameter "image adapter").
LAYERS, PROJ, ALL = "layers", "proj", "all"
DEFAULT_GROUP = LAYERS  # the group verdicts and default objectives judge (it sits upstream of the branch)


@dataclass
class GroupProbe:
    """The paired probe for one adapter group."""

    ratio: float  # geometric mean over batches of ||g_G|| with / without the branch
    ratio_lo: float  # 95% t-interval of that geometric mean (on the log scale), within this seed
    ratio_hi: float
    share: float  # mean over batches of ||g_G||^2 / (||g_G||^2 + ||g_X||^2), branch active
    norm_with: float  # mean ||g_G|| with the branch
    norm_without: float  # mean ||g_G|| with the branch bypassed
    per_batch_ratios: list[float]


@dataclass
class ProbeResult:
    """Paired with/without-branch gradient probe on identical weights and batches (docs/concepts.md).

    ``grad_ratio`` and the verdict are the judged group's (``group``, block adapters by default);
    ``groups`` holds every group. After step 0 this is a *bypass* ratio: it compares the trained
    model with the same model minus a branch it has learned to use, so it also measures that
    co-adaptation. The training-time comparison with the baseline run is in ``ablate.engine.compare``.
    """

    fix: str
    scale: float | None
    step: int
    group: str
    grad_ratio: float
    grad_ratio_ci: tuple[float, float]  # within-seed 95% interval (t on log ratios over batches)
    groups: dict[str, GroupProbe]
    grad_norm_branch: float  # mean ||grad_X L||, X = branch + join parameters
    norm_inflation: float  # mean over tokens of |x + join(c)| / |x| at the injection point
    loss_with: float  # mean loss over the probe batches, branch active
    loss_without: float  # same, branch bypassed
    feature_cosine: float  # mean cosine of final-level features with vs without the branch
    threshold: float
    verdict: str  # "OK" if grad_ratio >= threshold else "CAUTION"

    def flat(self) -> dict[str, Any]:
        """Flat scalar fields (what the store's probe table holds): grad_ratio_layers, grad_share_proj, ..."""
        d: dict[str, Any] = {k: v for k, v in asdict(self).items() if k not in ("groups", "grad_ratio_ci")}
        d["grad_ratio_lo"], d["grad_ratio_hi"] = self.grad_ratio_ci
        d["grad_share"] = self.groups[self.group].share
        for name, g in self.groups.items():
            d[f"grad_ratio_{name}"] = g.ratio
            d[f"grad_ratio_{name}_lo"] = g.ratio_lo
            d[f"grad_ratio_{name}_hi"] = g.ratio_hi
            d[f"grad_share_{name}"] = g.share
            d[f"grad_norm_{name}_with"] = g.norm_with
            d[f"grad_norm_{name}_without"] = g.norm_without
        d["per_batch_ratios"] = {name: list(g.per_batch_ratios) for name, g in self.groups.items()}
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grad_ratio_ci"] = list(self.grad_ratio_ci)
        return d


@dataclass
class TrainResult:
    """One short training run: summary numbers plus the per-step series and probe points.

    Ratios named ``grad_ratio_*`` are bypass-probe ratios of the judged ``group``; the comparison
    with the no-branch baseline run (``train_grad_ratio_*``, ``adapter_gain_rel``) needs that run
    and is added by :func:`ablate.engine.compare.compare_to_baseline`.
    """

    fix: str
    scale: float | None
    seed: int
    steps: int
    device: str
    group: str
    frozen: tuple[str, ...]  # adapter groups the optimiser did not update (the frozen control)
    loss_first: float  # mean loss over the first 10% of steps
    loss_last: float  # mean loss over the last 10% of steps
    loss_slope: float  # least-squares slope after warm-up, loss per 100 steps (negative = learning)
    grad_ratio_init: float  # bypass probe ratio at step 0 (judged group)
    grad_ratio_final: float  # bypass probe ratio at the last probe point
    grad_ratio_mean: float  # geometric mean of the bypass ratios over all probe points
    # Held-out loss with the judged group reset to its initial weights minus the loss as trained,
    # mean over the probe batches: > 0 when what that group learned helps; exactly 0 when frozen.
    adapter_gain: float
    adapter_gain_lo: float
    adapter_gain_hi: float
    adapter_gain_batches: list[float]
    wall_s: float
    steps_per_s: float  # training steps per second, probes excluded
    peak_mem_mb: float  # CUDA: max allocated; CPU: process peak RSS
    packed_arms: int = 1  # arms trained side by side with this one (wall, speed, FLOPs are the pack's)
    step_flops: float = float("nan")  # FLOPs of one step of the pack (forward + backward), counted
    mfu: float = float("nan")  # step_flops / step time / the device's peak bf16 rate (NaN: peak unknown)
    groups: tuple[str, ...] = ()  # the watched adapter groups, their union "all" last
    metrics: dict[str, list[float]] = field(default_factory=dict)  # name -> value per step
    probes: list[ProbeResult] = field(default_factory=list)
    # The end-of-run evaluation (ablate.subjects.aaclip.evaluate.EvalResult), None when it was off.
    evaluation: Any = None
    # With evaluations during training (eval.every): step (updates done) -> the step row of its means
    # ("eval/pixel_auroc", ...), the end's included; empty otherwise.
    step_evaluations: dict[int, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The scalar fields plus the step-0 probe of every group (what a run row holds), and the
        evaluation: its four means (None when not evaluated) and ``evaluation`` (per class, or None)."""
        skip = ("metrics", "probes", "adapter_gain_batches", "evaluation", "step_evaluations")
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        d["frozen"] = ",".join(self.frozen)
        d["groups"] = list(self.groups)
        ev = self.evaluation
        for name in EVAL_METRICS:
            d[name] = ev.metrics[name] if ev is not None else None
        d["evaluation"] = ev.to_dict() if ev is not None else None
        p0 = self.probes[0] if self.probes else None
        if p0 is not None:
            d["grad_ratio_init_lo"], d["grad_ratio_init_hi"] = p0.grad_ratio_ci
            d["grad_share_init"] = p0.groups[p0.group].share
            d["norm_inflation_init"] = p0.norm_inflation
            d["loss0_with"], d["loss0_without"] = p0.loss_with, p0.loss_without
            d["feature_cosine_init"] = p0.feature_cosine
            d["verdict"] = p0.verdict
            for name, g in p0.groups.items():
                d[f"grad_ratio_init_{name}"] = g.ratio
                d[f"grad_share_init_{name}"] = g.share
        return d
