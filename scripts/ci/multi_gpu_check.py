"""The multi-GPU section of gpu_check.sh: NCCL, hybrid sharding and asynchronous checkpoints, on every GPU.

Trains the engine's test task (tests/engine_driver.py: an MLP on scikit-learn's digits) with torchrun
(``python -m dyt.launch``, as users start it) on all visible GPUs under FSDP2 with
``trainer.sharding=hybrid`` (shard groups of half the GPUs, two replicas) and
``trainer.async_checkpoint=true``, then runs the same command with more steps: it must resume from the
asynchronously written checkpoint. Prints one markdown table row per run and exits non-zero when a run
fails. ``--device cpu --nproc 2`` runs the same on CPU with gloo (the dry run).

    python scripts/ci/multi_gpu_check.py                 # on a machine with 2 or more GPUs
    python scripts/ci/multi_gpu_check.py --device cpu --nproc 2 --out /tmp/mgpu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def train(run: Path, device: str, nproc: int, steps: int) -> dict:
    """One torchrun launch; rank 0's results."""
    launcher = [sys.executable, "-m", "dyt.launch", "--standalone", f"--nproc_per_node={nproc}"]
    settings = {
        "device": device,
        "distributed": "fsdp",
        "sharding": "hybrid",
        "shard_group_size": max(1, nproc // 2),
        "async_checkpoint": "true",
        "global_batch": 64,
        "max_steps": steps,
        "ckpt_every_steps": 2,
        "accept_changes": "[trainer.max_steps]",
    }
    cmd = [*launcher, "tests/engine_driver.py", str(run), *(f"trainer.{k}={v}" for k, v in settings.items())]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    if done.returncode:
        raise SystemExit(f"the launch failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--nproc", type=int, default=None, help="processes (default: every visible GPU)")
    parser.add_argument("--out", type=Path, default=None, help="run dir parent (default: a temporary one)")
    args = parser.parse_args(argv)
    import torch

    nproc = args.nproc or torch.cuda.device_count()
    if nproc < 2:
        print(f"skipped: {nproc} GPU(s) visible; this section needs 2 or more")
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="multi_gpu_check_"))
    run = out / "run"
    print("| run | processes | steps | val/top1 | newest checkpoint |\n|---|---|---|---|---|")
    for label, steps in (("hybrid + async checkpoints", 4), ("same command, resumed", 6)):
        results = train(run, args.device, nproc, steps)
        newest = (run / "checkpoints" / "last").read_text().strip()
        print(f"| {label} | {results['world_size']} | {results['steps']} | {results['val/top1']:.2f} | {newest} |")
        if newest != f"step_{steps:08d}":
            raise SystemExit(f"the newest published checkpoint is {newest}, expected step_{steps:08d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
