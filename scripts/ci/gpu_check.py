"""Everything that needs a GPU, in one call, into one markdown report (driver of gpu_check.sh).

Sections, in order of importance, each in its own subprocess with its own time limit (a crash or a
timeout is recorded in the report and the next section still runs; the report is rewritten after each):

1. ``pytest -m gpu``: the Triton kernels and the modules on CUDA against the float64 formula
   (fp32/bf16/fp16, both layouts).
2. ``scripts/bench/norms.py --device cuda``: the kernels against LayerNorm, RMSNorm, sigmoid and a copy.
3. ``scripts/bench/llama_norm_latency.py --paper``: paper Tables 14/15 (LLaMA-2 7B, 4096 tokens, bf16),
   with fewer passes than the paper's 100 + 100 to fit the time limit.
4. ``scripts/bench/model_speed.py --device cuda --dtype bf16 --compile``: a bf16 train step of ViT-B
   and the 1B LLaMA with and without torch.compile (images/s or tokens/s, peak memory, DyT/LN ratios,
   graph breaks).
5. ``scripts/ci/multi_gpu_check.py``: with 2 or more GPUs, FSDP2 over NCCL with hybrid sharding and
   asynchronous checkpoints, trained and resumed (skipped, in seconds, on one GPU).

    bash scripts/ci/gpu_check.sh                       # on a CUDA machine: < 8 minutes (+ 90 s, several GPUs)
    bash scripts/ci/gpu_check.sh results/gpu_report.md
    python scripts/ci/gpu_check.py --dry-run /tmp/report.md   # on CPU: the same plumbing, tiny sizes

``--dry-run`` runs every section on CPU at toy sizes (the Triton kernels under Triton's interpreter),
so the driver and its report are testable without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@dataclass
class Section:
    title: str
    command: list[str]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)


MULTI_GPU = "Multi-GPU: FSDP2 hybrid sharding and async checkpoints, trained and resumed"


def sections(dry_run: bool) -> list[Section]:
    """The checks; ``dry_run``: the same scripts on CPU at toy sizes."""
    multi_gpu = [PY, "scripts/ci/multi_gpu_check.py"]
    if dry_run:
        return [
            Section(
                "Triton kernels (interpreter on CPU) against the float64 formula",
                [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fused.py", "-k", "triton"],
                300,
                {"TRITON_INTERPRET": "1"},
            ),
            Section(
                "Kernel benchmark",
                [
                    PY,
                    "scripts/bench/norms.py",
                    "--shapes",
                    "256x64",
                    "--dtypes",
                    "fp32",
                    "--variants",
                    "DyT kernel",
                    "--repeats",
                    "1",
                    "--iters",
                    "1",
                ],
                300,
            ),
            Section(
                "LLaMA norm latency (Tables 14/15 setting, toy size)",
                [
                    PY,
                    "scripts/bench/llama_norm_latency.py",
                    "--model",
                    "llama_tiny",
                    "--seq-len",
                    "16",
                    "--iters",
                    "1",
                    "--warmup",
                    "1",
                    "--modes",
                    "eager",
                    "--device",
                    "cpu",
                ],
                300,
            ),
            Section(
                "Train step (toy size)",
                [PY, "scripts/bench/model_speed.py", "--models", "llama_tiny:2:16", "--repeats", "1"],
                300,
            ),
            Section(MULTI_GPU + " (2 CPU processes, gloo)", [*multi_gpu, "--device", "cpu", "--nproc", "2"], 300),
        ]
    # Time limits add up to 470 s on one GPU (the multi-GPU section skips at once): the whole check stays
    # under 8 minutes whatever hangs, under 9.5 with several GPUs.
    model_speed = [PY, "scripts/bench/model_speed.py", "--device", "cuda", "--dtype", "bf16", "--compile"]
    return [
        Section(
            "Kernel tests on CUDA (pytest -m gpu)",
            [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu"],
            80,
        ),
        Section(
            "Kernel benchmark (CUDA)",
            [PY, "scripts/bench/norms.py", "--device", "cuda", "--full", "--repeats", "5", "--iters", "10"],
            50,
        ),
        Section(
            "LLaMA-2 7B norm latency, paper Tables 14/15 setting (10 + 10 passes instead of 100 + 100)",
            [PY, "scripts/bench/llama_norm_latency.py", "--paper", "--iters", "10", "--warmup", "10"],
            130,
        ),
        Section("bf16 train step: ViT-B/16, eager and torch.compile", [*model_speed, "--models", "vit_b:64:224"], 100),
        Section(
            "bf16 train step: LLaMA 1B, eager and torch.compile", [*model_speed, "--models", "llama_1b:4:2048"], 110
        ),
        Section(MULTI_GPU + " (every GPU, NCCL; skipped on one GPU)", multi_gpu, 90),
    ]


def run(section: Section) -> tuple[str, int | str, float]:
    """(output, exit status or "timeout", seconds) of one section."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **section.env}
    try:
        done = subprocess.run(
            section.command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=section.timeout_s
        )
        output, status = (
            done.stdout + (f"\n[stderr]\n{done.stderr[-4000:]}" if done.returncode else ""),
            done.returncode,
        )
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        status = "timeout"
    return output.strip(), status, time.perf_counter() - start


def machine() -> str:
    """One line naming the machine, the GPU and the software."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return (
        f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}, "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    )


def write_report(path: Path, header: list[str], done: list[tuple[Section, str, int | str, float]]) -> None:
    lines = [*header, ""]
    for section, output, status, seconds in done:
        verdict = "passed" if status == 0 else ("TIMED OUT" if status == "timeout" else f"FAILED (exit {status})")
        lines += [f"## {section.title}", "", f"`{' '.join(section.command[1:])}`: {verdict} in {seconds:.0f} s", ""]
        lines += ["```", output or "(no output)", "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", nargs="?", type=Path, default=ROOT / "results/gpu_report.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks the plumbing")
    args = parser.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on a GPU machine, or use --dry-run to check the plumbing on CPU")
    header = [
        "# GPU check" + (" (dry run on CPU, toy sizes)" if args.dry_run else ""),
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}",
    ]
    done = []
    for section in sections(args.dry_run):
        print(f"gpu_check: {section.title} ...", flush=True)
        output, status, seconds = run(section)
        done.append((section, output, status, seconds))
        write_report(args.report, header, done)
        print(f"gpu_check: {'ok' if status == 0 else status} in {seconds:.0f} s", flush=True)
    print(f"gpu_check: report written to {args.report}")
    return 0 if all(status == 0 for _, _, status, _ in done) else 1


if __name__ == "__main__":
    sys.exit(main())
