"""Reading run dirs: what each run was (experiment, model, norm, seed) and what it measured.

A run dir holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per log
line) and, once finished, ``results.json`` (final metrics). ``metrics.jsonl`` is the source of truth
for curves; ``results.json`` for tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from dyt.nn.factory import norm_tag


@dataclass
class Run:
    """One finished or unfinished run dir."""

    path: Path
    experiment: str
    model: str
    norm: str
    seed: int
    paper_ref: dict[str, str] | None
    results: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    #: How this run's recipe differs from the experiment's most common one ("" when it does not): runs
    #: of different recipes are never averaged as seeds (set by :func:`find_runs`).
    variant: str = ""

    def recipe(self) -> dict[str, Any]:
        """The training config, less what may differ between seeds and norms of one table row (seed,
        norm, names and paths; see ``dyt.engine.identity.NON_TRAINING_KEYS`` and
        ``dyt.tasks.EVAL_ONLY_KEYS``). A model option that the norm tag names is the norm's too:
        ``norm=normfree/fixup`` sets ``model.residual_init=fixup`` and ``norm=normfree/sigma_reparam`` sets
        ``model.sigma_reparam=true`` (paper Table 9's columns), while ``norm=layernorm
        +model.sigma_reparam=true`` stays a variant of the LayerNorm column."""
        from dyt.engine.identity import NON_TRAINING_KEYS, flatten
        from dyt.tasks import EVAL_ONLY_KEYS

        skip = (
            *NON_TRAINING_KEYS,
            *EVAL_ONLY_KEYS,
            "seed",
            "norm",
            "norm.*",
            "trainer.accept_changes",
            "init_from.made_by",
        )
        recipe = {k: v for k, v in flatten(self.config).items() if not any(fnmatch(k, p) for p in skip)}
        recipe = {
            k: v
            for k, v in recipe.items()
            if not (k.startswith("model.") and (v == self.norm or (v is True and k.rpartition(".")[2] == self.norm)))
        }
        # A fine-tune starts from its own norm's and seed's pre-training run: compare the pattern, not the path.
        seed = f"seed{self.seed}"
        return {
            k: v.replace(f"/{self.norm}/", "/<norm>/").replace(seed, "seed<k>") if isinstance(v, str) else v
            for k, v in recipe.items()
        }

    @property
    def finished(self) -> bool:
        return bool(self.results)

    def metrics(self) -> list[dict[str, Any]]:
        """Every line of ``metrics.jsonl`` (a torn last line, from a kill mid-write, is skipped)."""
        return read_jsonl(self.path / "metrics.jsonl")

    def analysis_rows(self) -> list[dict[str, Any]]:
        """What the trainer logged and what ``scripts/analysis/`` measured afterwards
        (``analysis/*.jsonl``), in one list of ``{step, ...}`` rows."""
        rows = self.metrics()
        for path in sorted((self.path / "analysis").glob("*.jsonl")):
            rows += read_jsonl(path)
        return rows

    def best(self, key: str, higher_is_better: bool = True) -> tuple[float, int] | None:
        """(best value of ``key`` over every evaluation in ``metrics.jsonl``, its step); None if never logged."""
        steps, values = self.curve(key)
        finite = [(v, s) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
        if not finite:
            return None
        return max(finite) if higher_is_better else min(finite, key=lambda p: (p[0], -p[1]))

    def curve(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of ``key`` over training."""
        points = [(m["step"], m[key]) for m in self.metrics() if key in m and "step" in m]
        return [s for s, _ in points], [v for _, v in points]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file, one per line; a torn line (a kill mid-write) is skipped."""
    lines = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def load_run(path: str | Path) -> Run:
    """The run in ``path`` (a run dir with ``config.yaml``)."""
    path = Path(path)
    config_file = path / "config.yaml"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} is not a run dir: it has no config.yaml (written when training starts)")
    cfg = yaml.safe_load(config_file.read_text())
    results_file = path / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    norm = cfg.get("norm", {})
    return Run(
        path=path,
        experiment=cfg.get("experiment_name", path.parent.parent.name),
        model=cfg.get("model", {}).get("name", "?"),
        norm=norm_tag(norm) if norm else "?",
        seed=int(cfg.get("seed", 0)),
        paper_ref=cfg.get("paper_ref"),
        results=results,
        config=cfg,
    )


def find_runs(root: str | Path) -> list[Run]:
    """Every run dir below ``root`` (any depth), sorted by experiment, norm and seed."""
    root = Path(root)
    if not root.exists():
        return []
    # Hydra keeps its own copy of the config in <run>/hydra/.hydra/config.yaml: not a run dir.
    runs = [load_run(p.parent) for p in root.rglob("config.yaml") if ".hydra" not in p.parts]
    _mark_variants(runs)
    return sorted(runs, key=lambda r: (r.experiment, r.variant, r.norm, r.seed))


def _mark_variants(runs: list[Run]) -> None:
    """Within each experiment, label the runs whose recipe differs from the most common one with the
    keys that differ (``optim.lr=0.006``), so that tables give them rows of their own."""
    by_experiment: dict[str, list[Run]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, []).append(run)
    for group in by_experiment.values():
        recipes = [r.recipe() for r in group]
        keyed = [json.dumps(rec, sort_keys=True, default=str) for rec in recipes]
        common = recipes[keyed.index(max(set(keyed), key=keyed.count))]
        for run, rec in zip(group, recipes):
            diff = sorted(k for k in rec.keys() | common.keys() if rec.get(k) != common.get(k))
            run.variant = ",".join(f"{k}={rec.get(k)}" for k in diff)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std
