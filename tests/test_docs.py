"""Every command and code example of README.md and docs/*.md runs, at toy size or as a dry run.

A fenced block tagged ``bash`` or ``python`` is runnable. A block that cannot run here says why in an
HTML comment on the line above it, ``<!-- docs-test: skip: <reason> -->`` (a cluster, a download, an
install); ``<!-- docs-test: given: llama (...) -->`` runs a Python fragment with that name defined.
Untagged blocks are output or trees and must not hold commands.

How each command runs (all in one process except the scripts' ``--help``, to stay fast):

- ``python train.py`` / ``eval.py`` / ``python -m dyt.launch ... train.py`` overrides (the launcher's
  options parsed as torchrun parses them): the dry run of
  :func:`dyt.preflight.check_command` (every group option and key is composed, as ``--cfg job`` would)
  and :func:`dyt.engine.validate.validate_config` (every value is in range);
- ``python scripts/<x>.py``: ``--help`` (the script exists and parses its arguments);
- ``python`` blocks: executed (their models are small or built on demand);
- setup commands (``pip install``, ``python3 -m venv``, ...) are not run: :data:`SETUP` gives the reason.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import dyt.cli  # noqa: F401  (registers the run-dir resolvers the configs use)
from dyt.engine.validate import validate_config
from dyt.launch import parse as parse_launch
from dyt.preflight import check_command

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = ("bash", "python")
# Commands a block may show that this test does not run, and why.
SETUP = {
    "pip": "installs packages",
    "python3 -m venv": "creates a virtual environment",
    ".": "activates a virtual environment",
    "sudo": "installs system packages",
    "export": "sets environment variables for the commands below",
    "hf download": "downloads from the Hugging Face Hub",
    "wget": "downloads a file",
    "curl": "downloads a file",
}


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    text: str
    marker: str  # the docs-test comment above it, or ""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = re.match(r"<!-- docs-test: (.*?) -->", before)
            line = text[: m.start()].count("\n") + 1
            found.append(Block(path, line, m.group(1), m.group(2), marker.group(1) if marker else ""))
    return found


ALL = blocks()
RUN = [b for b in ALL if b.lang in RUNNABLE]


def commands(block: Block) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments dropped, ``a && b`` split."""
    text = re.sub(r"\\\n\s*", " ", block.text)
    out = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def dry_run(config: str, args: list[str]) -> None:
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-") and a != "..." and not a.endswith("=...")]
    cfg = check_command(config, overrides, multirun=multirun)
    if config == "train":
        validate_config(cfg)


def run_command(command: str) -> str:
    """Run (or dry-run) one command; returns what was done, for the failure message."""
    for prefix, reason in SETUP.items():
        if command == prefix or command.startswith(prefix + " "):
            return f"not run: {reason}"
    words = shlex.split(command.replace("$(", "").replace(")", ""))
    assert words[0] != "torchrun", f"{command!r}: show python -m dyt.launch (torchrun's options, one-line errors)"
    if words[:3] == ["python", "-m", "dyt.launch"]:
        launch = parse_launch(words[3:])
        words = ["python", launch.training_script, *launch.training_script_args]
    assert words[0] == "python", f"no rule for the command {command!r}: add one to tests/test_docs.py"
    if words[1] in ("train.py", "eval.py"):
        dry_run(words[1].removesuffix(".py"), words[2:])
        return "dry run"
    if words[1] == "-m" and words[2] == "pytest":
        return "not run: the test suite itself"
    script_help(words[1])
    return "--help"


@functools.cache
def script_help(name: str) -> None:
    """``python <script> --help`` succeeds (once per script: several blocks show the same one)."""
    script = ROOT / name
    assert script.is_file() and script.suffix == ".py", f"{name} does not exist"
    out = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "usage" in out.stdout.lower(), f"{name} --help failed:\n{out.stderr[-2000:]}"


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_runnable_block(block, monkeypatch, tmp_path):
    if block.marker.startswith("skip:"):
        pytest.skip(block.marker)
    assert not block.marker or block.marker.startswith("given:"), f"unknown docs-test marker {block.marker!r}"
    if block.lang == "bash":
        for command in commands(block):
            run_command(command)
        return
    namespace: dict = {}
    if block.marker.startswith("given: llama"):
        import dyt

        namespace.update(dyt=dyt, llama=tiny_llama())
    monkeypatch.chdir(tmp_path)
    exec(compile(block.text, block.id, "exec"), namespace)


def test_every_runnable_block_is_run_or_skipped_with_a_reason():
    assert len(RUN) >= 20, [b.id for b in RUN]  # the extraction finds the blocks
    for b in RUN:
        assert not b.marker.startswith("skip") or len(b.marker) > len("skip: ") + 10, f"{b.id}: say why"
    skipped = [b for b in RUN if b.marker.startswith("skip:")]
    assert len(skipped) <= 6, [b.id for b in skipped]


def test_untagged_blocks_hold_no_commands():
    """A command in an untagged block would escape this test: tag it bash (or python)."""
    for b in ALL:
        if b.lang not in RUNNABLE:
            lines = [line.strip() for line in b.text.splitlines()]
            cmds = [line for line in lines if re.match(r"(python3?|torchrun|sbatch|pip) ", line)]
            assert not cmds, f"{b.id}: untagged block with commands {cmds[:2]}: tag it ```bash"


def test_the_readme_says_runs_are_deterministic_on_one_machine_only():
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "Runs are deterministic on one machine" in text and "AVX-512" in text
    assert "Runs are deterministic: the same command gives the same numbers" not in text
