"""Export a trained LLaMA run to a directory others can load (config.json + model.safetensors).

    python scripts/export_llama.py runs/llama_1b/rmsnorm/seed0 exports/llama_1b_rmsnorm            # hf
    python scripts/export_llama.py runs/llama_1b/dyt/seed0 exports/llama_1b_dyt                    # dyt
    python scripts/export_llama.py runs/llama_1b/dyt/seed0 exports/llama_1b_dyt_ema --key ema

An RMSNorm model becomes a Hugging Face ``LlamaForCausalLM`` directory (``from_pretrained`` loads it). A
DyT model cannot: that class has RMSNorm at every norm site and no embedding scale. It is written in our
format instead (our parameter names, and a config.json with the model and norm configs), which
``dyt.weights.load_exported(dir)`` or ``init_from=<dir>`` read back. ``--format hf`` refuses a DyT model
rather than writing something that loads into a different function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.engine.checkpoint import CheckpointError  # noqa: E402
from dyt.weights import EXPORT_FORMATS, InitFromError, export_llama_hf  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run dir, its checkpoints/ directory or a checkpoint (the newest is used)")
    p.add_argument("out_dir", help="the directory to write config.json and model.safetensors into")
    p.add_argument(
        "--format", choices=EXPORT_FORMATS, default="auto", help="hf, dyt, or auto: hf when the model fits it"
    )
    p.add_argument("--key", choices=("model", "ema"), default="model", help="raw or EMA weights (default: raw)")
    args = p.parse_args(argv)
    try:
        written = export_llama_hf(args.run, args.out_dir, format=args.format, key=args.key)
    except (ValueError, CheckpointError, InitFromError) as e:
        sys.exit(f"export_llama: {e}")
    print(f"wrote {args.out_dir} ({written} format)")


if __name__ == "__main__":
    main()
