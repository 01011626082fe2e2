"""Check that each parity test fails when the AA-CLIP choice it guards changes (docs/parity.md,
"What each test catches"): one change at a time is written into the source, the named tests run,
and the file is put back (also on an error or Ctrl-C). Prints one JSON line per change; exit 1 if a
change passed its tests.

    python tools/parity_mutations.py            # every change (a few minutes on 2 cores)
    python tools/parity_mutations.py 0 3        # the first and the fourth

Run it on a clean working tree: it edits files in place while it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (the change, the file, the text replaced, its replacement, the tests that must fail)
MUTATIONS = [
    (
        "Stage 2 Adam betas (0.5, 0.999) -> (0.9, 0.999)",
        "ablate/engine/loop.py",
        "    betas: tuple[float, float] = (0.5, 0.999)",
        "    betas: tuple[float, float] = (0.9, 0.999)",
        "tests/test_parity.py -k adam",
    ),
    (
        "Stage 1 Adam betas (0.5, 0.999) -> (0.9, 0.999)",
        "ablate/subjects/aaclip/stage1.py",
        "    betas: tuple[float, float] = (0.5, 0.999)",
        "    betas: tuple[float, float] = (0.9, 0.999)",
        "tests/test_parity.py -k adam",
    ),
    (
        'a normal-state prompt: "the {}" -> "this {}"',
        "ablate/subjects/aaclip/prompts.py",
        'NORMAL_STATES = ("{}", "a {}", "the {}")',
        'NORMAL_STATES = ("{}", "a {}", "this {}")',
        "tests/test_parity.py -k prompt_states",
    ),
    (
        'MVTec AD bottle: "dark bottle" -> "bottle"',
        "ablate/subjects/aaclip/data/class_names.toml",
        'bottle = "dark bottle"',
        'bottle = "bottle"',
        "tests/test_parity.py -k every_class_name",
    ),
    (
        "Stage 2 lr 5e-4 -> 1e-4 (training.lr default)",
        "ablate/spec.py",
        "    lr: float = Field(5e-4, gt=0)",
        "    lr: float = Field(1e-4, gt=0)",
        "tests/test_parity.py -k adam",
    ),
    (
        "Stage 1 lr 1e-5 -> 2e-5 (stage1.lr default)",
        "ablate/spec.py",
        "    lr: float = Field(1e-5, gt=0)",
        "    lr: float = Field(2e-5, gt=0)",
        "tests/test_parity.py -k adam",
    ),
    (
        "Stage 1 orthogonality weight 0.1 -> 0.2",
        "ablate/spec.py",
        "    orthogonal_weight: float = Field(0.1, ge=0)",
        "    orthogonal_weight: float = Field(0.2, ge=0)",
        "tests/test_parity.py -k defaults",
    ),
    (
        'Stage 1 surgery attention "batch" -> "tokens" by default',
        "ablate/spec.py",
        '    surgery_attention: Literal["batch", "tokens"] = "batch"',
        '    surgery_attention: Literal["batch", "tokens"] = "tokens"',
        "tests/test_parity.py -k defaults",
    ),
    (
        "data.batch_size default 2 -> 4",
        "ablate/spec.py",
        "    batch_size: int = Field(2, ge=1, le=4096)  # AA-CLIP's Stage 2 batch",
        "    batch_size: int = Field(4, ge=1, le=4096)  # AA-CLIP's Stage 2 batch",
        "tests/test_parity.py -k defaults",
    ),
    (
        "image adapter residual weight 0.1 -> 0.2",
        "ablate/subjects/aaclip/model.py",
        "    adapter_weight: float = 0.1",
        "    adapter_weight: float = 0.2",
        "tests/test_parity.py -k row3",
    ),
    (
        "detection token normalised again after the mean",
        "ablate/subjects/aaclip/model.py",
        "        det = F.normalize(self._det_proj(tokens), dim=-1).mean(dim=1)",
        "        det = F.normalize(F.normalize(self._det_proj(tokens), dim=-1).mean(dim=1), dim=-1)",
        "tests/test_parity.py -k row3",
    ),
    (
        "segmentation logit scale 100 -> 50",
        "ablate/subjects/aaclip/model.py",
        "LOGIT_SCALE = 100.0",
        "LOGIT_SCALE = 50.0",
        "tests/test_parity.py -k row3",
    ),
    (
        "industrial blur sigma 1.0 -> 1.2",
        "ablate/subjects/aaclip/scoring.py",
        'DOMAIN_BLUR = {"industrial": (7, 1.0)',
        'DOMAIN_BLUR = {"industrial": (7, 1.2)',
        "tests/test_parity.py -k row1",
    ),
    (
        "focal smoothing 1e-5 -> 1e-4",
        "ablate/subjects/aaclip/loss.py",
        "FOCAL_SMOOTH = 1e-5",
        "FOCAL_SMOOTH = 1e-4",
        "tests/test_parity.py -k rows5_6",
    ),
    (
        "image score 0.5 / 0.5 -> 0.6 / 0.4",
        "ablate/subjects/aaclip/scoring.py",
        "    return 0.5 * pmax + 0.5 * min_max(",
        "    return 0.6 * pmax + 0.4 * min_max(",
        "tests/test_parity.py -k row2",
    ),
    (
        "masks resized NEAREST -> BILINEAR",
        "ablate/subjects/aaclip/data/image_dataset.py",
        "resize((size, size), Image.Resampling.NEAREST)",
        "resize((size, size), Image.Resampling.BILINEAR)",
        "tests/test_parity.py -k row12",
    ),
    (
        "Stage 1 features without the image embedding",
        "ablate/subjects/aaclip/stage1.py",
        "dim=-1) + image.unsqueeze(1) for f in feats]",
        "dim=-1) for f in feats]",
        "tests/test_parity.py -k stage1_image",
    ),
    (
        "text adapter projection without its LeakyReLU",
        "ablate/subjects/aaclip/layers.py",
        "        self.proj = nn.Sequential(projection(d_txt, embed), nn.LeakyReLU())",
        "        self.proj = nn.Sequential(projection(d_txt, embed))",
        "tests/test_parity.py -k row9_the_text_adapter",
    ),
    (
        "exact metrics: a tie counted whole, not half",
        "ablate/eval/exact.py",
        "* 2 + int((equal * counts).sum())",
        "* 2 + 2 * int((equal * counts).sum())",
        "tests/test_eval_metrics.py -k exact_metrics",
    ),
    (
        "a half-precision checkpoint resized without the fp32 step",
        "ablate/subjects/aaclip/backbone.py",
        "    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}",
        "    state = dict(state)",
        "tests/test_weights.py -k half",
    ),
    (
        "eval.every evaluating one step late",
        "ablate/engine/loop.py",
        "step > 0 and step % evaluate_every == 0:",
        "step > 0 and step % evaluate_every == 1:",
        "tests/test_eval.py -k eval_every",
    ),
    (
        "a k-shot list read in reverse order",
        "ablate/subjects/aaclip/data/shots.py",
        "    if not out:\n",
        "    out.reverse()\n    if not out:\n",
        "tests/test_folders.py -k shots_file_in",
    ),
    (
        "MPDD connector renamed",
        "ablate/subjects/aaclip/data/class_names.toml",
        'connector = "metal clamps with black adjustment knobs"',
        'connector = "connector"',
        "tests/test_parity.py -k every_class_name",
    ),
]


def run(selected: list[int]) -> list[dict]:
    out = []
    for i, (label, path, old, new, tests) in enumerate(MUTATIONS):
        if selected and i not in selected:
            continue
        file = ROOT / path
        text = file.read_text()
        if old not in text:
            raise SystemExit(f"{path}: the text to change is gone ({label}); update MUTATIONS")
        file.write_text(text.replace(old, new, 1))
        try:
            cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests.split()]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        finally:
            file.write_text(text)
        failed = [line.split(" - ")[0] for line in proc.stdout.splitlines() if line.startswith("FAILED")]
        out.append({"change": label, "caught": proc.returncode != 0 and bool(failed), "failed": failed})
        print(json.dumps(out[-1]), flush=True)
    return out


if __name__ == "__main__":
    results = run([int(a) for a in sys.argv[1:]])
    sys.exit(0 if all(r["caught"] for r in results) else 1)
