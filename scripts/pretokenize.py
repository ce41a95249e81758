"""Build the memory-mapped token files of a language-model data config before training.

Training builds missing token files itself (rank 0, the other ranks wait), which is fine for the small
offline corpus. For a large corpus (The Pile: ~300B tokens) run this once, on one machine with many
cores (the Rust tokenizer parallelises inside each batch of documents), into a ``cache_dir`` every
training node can read; the run then finds the files under the same key and starts at once.

    python scripts/pretokenize.py                                        # configs/data/text_stdlib.yaml
    python scripts/pretokenize.py data=text_pile data.source=/data/pile data.cache_dir=/shared/tokens
    python scripts/pretokenize.py data=text_pile data.max_docs=100000 --splits val

Arguments other than ``--splits`` are Hydra overrides of ``configs/train.yaml``, as for ``train.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.data.text import SPLITS, corpus_dir, write_token_file  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    p.add_argument("--force", action="store_true", help="rebuild token files that already exist")
    args, overrides = p.parse_known_args(argv)

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        default = [] if any(o.startswith("data=") for o in overrides) else ["data=text_stdlib"]
        cfg = compose("train", overrides=[*default, *overrides]).data
    print(f"token files of data={cfg.name}: {corpus_dir(cfg)}", flush=True)
    for split in args.splits:
        path = corpus_dir(cfg) / f"{split}.bin"
        if path.exists() and not args.force:
            print(f"{split}: exists, skipped (--force rebuilds)")
            continue
        start = time.time()
        write_token_file(cfg, split)
        meta = json.loads(path.with_suffix(".json").read_text())
        print(
            f"{split}: {meta['num_tokens']:,} tokens from {meta['num_docs']:,} documents "
            f"in {time.time() - start:.1f}s -> {path}",
            flush=True,
        )


if __name__ == "__main__":
    main()
