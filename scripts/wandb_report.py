"""Build a W&B report comparing the norms (LN vs DyT) of one experiment.

    python scripts/wandb_report.py paper/vit_b_in1k                    # entity: your W&B default
    python scripts/wandb_report.py paper/llama2_7b --entity my-team --project dyt --norms rmsnorm dyt
    python scripts/wandb_report.py paper/vit_b_in1k --dry-run          # print the report spec; no upload

Runs are found the way the trainer logs them (``logger=wandb``, dyt/engine/logging.py): grouped by
experiment (``experiment_name``), named ``<experiment>/<norm>/seed<k>``, with the resolved config,
so the norm is ``config.norm.tag``. The report holds, per norm averaged over seeds (band: min-max),
the training-loss curves (as the paper's Figs. 5 and 6), the evaluation metrics over training, the
mean |alpha| of DyT (Fig. 8), the final metrics side by side, and a run comparer that shows the
config differences. Only metrics that the runs logged get a panel.

Needs W&B online (``wandb login``, or ``WANDB_API_KEY``) and the ``wandb-workspaces`` package.
Offline runs are uploaded first with ``wandb sync runs/<experiment>/*/seed*/wandb/offline-run-*``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence

# Metric names the trainer and tasks log (issue 6); the first three are curves over steps.
CURVES = ("train/loss", "val/loss", "alpha/mean")
HEADLINES = ("val/top1", "val/top1_ema", "val/loss", "fid", "lm_eval/score")


class ReportError(RuntimeError):
    """The report cannot be built: offline, not logged in, or no runs for the experiment."""


def _reports_module():
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as e:
        raise ReportError(
            "building W&B reports needs the wandb-workspaces package: pip install 'wandb-workspaces>=0.4'"
        ) from e
    return wr


def check_online() -> None:
    """Fail with a clear message when W&B is offline or no API key is configured."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        raise ReportError(
            f"WANDB_MODE={mode}: a report lives on the W&B server; unset WANDB_MODE, run "
            "`wandb login`, and upload offline runs with `wandb sync <run dir>/wandb/offline-run-*`"
        )
    import wandb

    try:
        wandb.Api()
    except wandb.errors.UsageError as e:
        raise ReportError(f"{e} (reports need W&B online: `wandb login`, or set WANDB_API_KEY)") from e


def logged_metrics(experiment: str, entity: str, project: str, norms: Sequence[str]) -> tuple[dict[str, int], set[str]]:
    """Runs per norm of ``experiment`` on the server, and the metric names their summaries hold."""
    import wandb

    runs = wandb.Api().runs(f"{entity}/{project}", filters={"group": experiment})
    counts: dict[str, int] = {}
    keys: set[str] = set()
    for run in runs:
        norm = (run.config.get("norm") or {}).get("tag")
        if norm in norms:
            counts[norm] = counts.get(norm, 0) + 1
            keys.update(k for k in run.summary_metrics if not k.startswith("_"))
    if not counts:
        raise ReportError(
            f"no runs of experiment {experiment!r} with norm in {list(norms)} in {entity}/{project}; "
            "train with logger=wandb (and `wandb sync` offline runs), or check --entity/--project"
        )
    return counts, keys


def build_report(
    experiment: str, entity: str, project: str, norms: Sequence[str], metrics: Iterable[str], title: str | None = None
):
    """The report object (``wandb_workspaces.reports.v2.Report``), not yet saved.

    ``metrics``: the metric names that get a panel (those the runs logged).
    """
    wr = _reports_module()
    metrics = set(metrics)
    norm_list = ", ".join(repr(n) for n in norms)
    runset = wr.Runset(
        entity=entity,
        project=project,
        name=f"{experiment}: {' vs '.join(norms)}",
        filters=f"Metric('Group') == '{experiment}' and Config('norm.tag') in [{norm_list}]",
        groupby=["norm.tag"],
    )

    def curve(metric: str) -> object:
        # One line per norm: mean over seeds, band from the lowest to the highest seed.
        return wr.LinePlot(
            title=metric,
            x="Step",
            y=[metric],
            groupby="norm.tag",
            groupby_aggfunc="mean",
            groupby_rangefunc="minmax",
            smoothing_factor=0.0,
        )

    panels = [curve(m) for m in CURVES if m in metrics]
    panels += [curve(m) for m in HEADLINES if m in metrics and m not in CURVES]
    finals = [m for m in HEADLINES if m in metrics]
    if finals:
        panels.append(
            wr.BarPlot(
                title="final metrics (mean over seeds)",
                metrics=finals,
                groupby="norm.tag",
                groupby_aggfunc="mean",
                groupby_rangefunc="minmax",
                orientation="v",
            )
        )
    panels.append(wr.RunComparer(diff_only="split"))
    return wr.Report(
        project=project,
        entity=entity,
        title=title or f"{experiment}: {' vs '.join(norms)}",
        description=f"Transformers without Normalization (DyT): {experiment}, norms {', '.join(norms)}, "
        "mean over seeds with min-max bands.",
        blocks=[
            wr.H1(text=f"{experiment}: {' vs '.join(norms)}"),
            wr.P(
                text="Each line is one norm averaged over its seeds; the band spans the seeds. Runs are named "
                "<experiment>/<norm>/seed<k> and grouped by experiment (scripts/wandb_report.py)."
            ),
            wr.PanelGrid(runsets=[runset], panels=panels),
        ],
    )


def describe(report) -> str:
    """A plain-text outline of ``report``: title, run filter, and each panel's type and metrics."""
    grid = next(b for b in report.blocks if type(b).__name__ == "PanelGrid")
    lines = [f"title: {report.title}", f"project: {report.entity}/{report.project}"]
    lines += [f"runs: {r.filters} (grouped by {', '.join(r.groupby)})" for r in grid.runsets]
    for panel in grid.panels:
        shown = getattr(panel, "y", None) or getattr(panel, "metrics", None) or []
        lines.append(f"panel: {type(panel).__name__} {getattr(panel, 'title', '') or ''} {list(shown)}".rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", help="experiment_name of the runs, e.g. paper/vit_b_in1k (the W&B group)")
    parser.add_argument(
        "--entity",
        default=os.environ.get("WANDB_ENTITY"),
        help="W&B entity (default: $WANDB_ENTITY, else your default entity)",
    )
    parser.add_argument(
        "--project",
        default=os.environ.get("WANDB_PROJECT", "dyt"),
        help="W&B project (default: $WANDB_PROJECT, else dyt, as configs/logger/wandb.yaml)",
    )
    parser.add_argument(
        "--norms", nargs="+", default=["layernorm", "dyt"], help="norm tags to compare (default: layernorm dyt)"
    )
    parser.add_argument("--title", help="report title (default: '<experiment>: <norm> vs <norm>')")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the report would hold instead of querying and saving (works offline)",
    )
    args = parser.parse_args(argv)
    import wandb

    try:
        if args.dry_run:
            report = build_report(
                args.experiment, args.entity or "ENTITY", args.project, args.norms, CURVES + HEADLINES, args.title
            )
            print(describe(report))
            return 0
        check_online()
        entity = args.entity or wandb.Api().default_entity
        counts, keys = logged_metrics(args.experiment, entity, args.project, args.norms)
        report = build_report(args.experiment, entity, args.project, args.norms, keys, args.title)
        report.save()
    except ReportError as e:
        print(f"wandb_report: {e}", file=sys.stderr)
        return 2
    except wandb.errors.CommError as e:
        print(f"wandb_report: cannot reach the W&B server ({e}); check the network or WANDB_BASE_URL", file=sys.stderr)
        return 2
    runs = ", ".join(f"{norm}: {n} run(s)" for norm, n in sorted(counts.items()))
    print(f"report saved ({runs}): {report.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
