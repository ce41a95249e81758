"""What a user trips on (issue 24): each mistake is refused with one ``error:`` line naming what was
wrong, what is allowed and the fix; none is silently accepted, and a failed start writes nothing.

The table runs in-process, as ``python train.py <argv>`` would: :func:`dyt.preflight.preflight` (the
command line: group options, keys, ``+`` keys, sweeps), then :func:`dyt.cli.train` on the composed config
(values, device, run dir, data, init_from) with the trainer's step replaced by a failure, so a mistake that
slips through cannot train. A few end-to-end checks run ``train.py`` itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dyt import preflight as pf
from dyt.cli import evaluate, train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")
NO_GPU = not torch.cuda.is_available()

# (argv, what the error line must say). {tmp} is a fresh directory; {file} an existing file.
TRAIN_MISTAKES = [
    # unknown config group options: the close matches, not the list
    (
        ["norm=dytt"],
        "norm=dytt is not an option of the config group norm (no configs/norm/dytt.yaml): did you mean norm=dyt",
    ),
    (["model=vit_bb"], "did you mean model=vit_b"),
    (["experiment=paper/vit_b_in1kk"], "did you mean experiment=paper/vit_b_in1k"),
    (["experiment=quickstart.yaml"], "did you mean experiment=quickstart"),
    (["data=imagenett"], "did you mean data=imagenet"),
    (["optim=adam"], "did you mean optim=adamw"),
    (["task=classifcation"], "did you mean task=classification"),
    (["logger=wandbb"], "did you mean logger=wandb"),
    (["trainer=fast"], "trainer=fast is not an option of the config group trainer"),
    (["norm=normfree/skipinitt"], "did you mean norm=normfree/skipinit"),
    (["norm=LayerNorm"], "did you mean norm=layernorm"),
    (["-m", "norm=layernorm,dytt"], "norm=dytt is not an option"),
    (["trainer.progress=log", "-m", "norm=dyt,layernrom"], "did you mean norm=layernorm"),
    (["-m", "model=vit_s,vit_bb", "norm=dyt"], "did you mean model=vit_b"),
    (["hydra/launcher=slurmm"], "hydra/launcher"),
    # unknown keys, with or without +
    (["trainer.epoch=3"], "trainer.epoch=3 names no key: trainer has no key 'epoch'; set trainer.epochs=3"),
    (
        ["+trainer.epoch=3"],
        "+trainer.epoch=3 adds a key nothing reads: trainer has no key 'epoch'; set trainer.epochs=3",
    ),
    (["++trainer.epoch=3"], "trainer has no key 'epoch'"),
    (["optim.learning_rate=1e-3"], "optim has no key 'learning_rate'"),
    (["+optim.learning_rate=1e-3"], "optim has no key 'learning_rate'"),
    (["+optim.schedule.warmup=5"], "optim.schedule has no key 'warmup'"),
    (["lr=1e-3"], "the config has no key 'lr'"),
    (["+seeds=1"], "the config has no key 'seeds'; set seed=1"),
    (["norm.alpha=0.5"], "norm has no key 'alpha'"),
    (["+norm.alpha=0.5"], "norm has no key 'alpha'"),
    (["+data.rooot=/data"], "data has no key 'rooot'; set data.root=/data"),
    (["+model.foo=1"], "+model.foo=1 is not an argument of the model preset vit_digits"),
    (["+model.drop_path=0.1"], "did you mean drop_path_rate"),
    (["+model.drop_path_rate=0.1"], "+model.drop_path_rate=0.1 adds a key that exists already: set it without '+'"),
    (["+trainer.epochs=3"], "adds a key that exists already"),
    # malformed command lines
    (["norm=layernorm,dyt"], "a comma-separated value (or glob/range) is a sweep; run it with -m"),
    (["seed=0,1,2"], "run it with -m"),
    (["trainer.max_steps"], "cannot parse the overrides"),
    (["-m", "--cfg", "job", "norm=dyt"], "--cfg and -m cannot be combined"),
    # values out of range
    (["trainer.global_batch=0"], "trainer.global_batch=0 is not allowed: it must be a positive whole number"),
    (["trainer.micro_batch=-1"], "trainer.micro_batch=-1 is not allowed"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5 is not allowed"),
    (["trainer.epochs=null", "trainer.max_steps=null"], "trainer.epochs and trainer.max_steps are both null"),
    (["seed=1.5"], "seed=1.5 is not allowed: it must be a whole number"),
    (["optim.lr=-1"], "optim.lr=-1 is not allowed: it must be a positive number"),
    (["optim.lr=fast"], "optim.lr='fast' is not allowed"),
    (["optim.lr=1e-3x"], "optim.lr='1e-3x' is not allowed"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1 is not allowed"),
    (["optim.betas=[0.9,1.5]"], "optim.betas=[0.9, 1.5] is not allowed: it must be two numbers in [0, 1)"),
    (["optim=sgd", "optim.momentum=1.5"], "optim.momentum=1.5 is not allowed"),
    (["optim=sgd", "optim.nesterov=true", "optim.momentum=0"], "Nesterov momentum needs optim.momentum > 0"),
    (["norm.alpha_init=0"], "norm.alpha_init=0 is not allowed: it must be a positive number or 'calibrate'"),
    (["norm.alpha_init=-1"], "norm.alpha_init=-1 is not allowed"),
    (["norm.calibrate_to=-2"], "norm.calibrate_to=-2 is not allowed"),
    (["+norm.sites.attn.alpha_init=-0.5"], "norm.sites.attn.alpha_init=-0.5 is not allowed"),
    (["trainer.ema_decay=1"], "trainer.ema_decay=1 is not allowed: it must be a number in [0, 1) or null"),
    (["trainer.clip_grad=0"], "trainer.clip_grad=0 is not allowed"),
    (["trainer.num_workers=-1"], "trainer.num_workers=-1 is not allowed"),
    (["trainer.log_every_steps=0"], "trainer.log_every_steps=0 is not allowed"),
    (["trainer.keep_checkpoints=0"], "trainer.keep_checkpoints=0 is not allowed"),
    (["trainer.ckpt_every_minutes=-1"], "trainer.ckpt_every_minutes=-1 is not allowed"),
    (["trainer.nonfinite_skips=-1"], "trainer.nonfinite_skips=-1 is not allowed"),
    (["optim.schedule.min_lr_ratio=2"], "optim.schedule.min_lr_ratio=2 is not allowed"),
    # device, run dir, data, weights
    (["trainer.device=gpu"], "trainer.device='gpu' is not allowed: it must be one of auto, cpu, cuda"),
    pytest.param(
        ["trainer.device=cuda"],
        "trainer.device=cuda but this machine has no CUDA GPU",
        marks=pytest.mark.skipif(not NO_GPU, reason="a GPU is visible"),
    ),
    (["run_dir={file}"], "is a file, not a directory"),
    (["data=imagenet", "data.root={tmp}/nope"], "does not exist or is not a directory"),
    (["init_from={tmp}/nope.pt"], "init_from: {tmp}/nope.pt does not exist"),
    (["experiment=mae_digits_finetune", "init_from.source={tmp}/runs/mae_digits/dyt/seed0"], "init_from="),
]


def _compose(config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose(config, overrides=overrides)


def attempt(config: str, argv: list[str], capsys) -> tuple[object, list[str]]:
    """Run a command line as train.py / eval.py would, in-process; (exit code, stderr lines)."""
    code: object = 0
    try:
        argv = pf.preflight(config, argv)
        flags, overrides = pf.split_argv(argv)
        assert "-m" not in flags, "a sweep passed the checks"
        (train if config == "train" else evaluate)(_compose(config, overrides))
    except SystemExit as e:
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def assert_one_line(code, err, message):
    assert code == 2, f"accepted (exit {code}): {err}"
    errors = [line for line in err if line.startswith("error: ")]
    rest = [line for line in err if not line.startswith(("error: ", "(set DYT_DEBUG=1"))]
    assert len(errors) == 1 and not rest, "\n".join(err)
    assert message in errors[0], errors[0]
    assert "Traceback" not in errors[0] and len(errors[0]) < 700, errors[0]


@pytest.fixture
def no_training(monkeypatch):
    from dyt.engine import Trainer

    def step(self, *args, **kwargs):
        raise AssertionError("silently accepted: the trainer took a step")

    monkeypatch.setattr(Trainer, "_train_step", step)
    monkeypatch.delenv("DYT_DEBUG", raising=False)


@pytest.mark.parametrize(("argv", "message"), TRAIN_MISTAKES)
def test_train_mistake_is_one_actionable_line(argv, message, tmp_path, capsys, no_training):
    (tmp_path / "a_file").write_text("x")
    fill = {"tmp": str(tmp_path), "file": str(tmp_path / "a_file")}
    argv = [a.format(**fill) for a in argv]
    if not any(a.startswith("run_dir=") for a in argv):
        argv.append(f"run_dir={tmp_path}/run")
    code, err = attempt("train", argv, capsys)
    assert_one_line(code, err, message.format(**fill))
    assert not (tmp_path / "run").exists(), "a failed start wrote into its run dir"


EVAL_MISTAKES = [
    (["run={tmp}/nonexistent"], "no checkpoint at"),
    (["runn={tmp}/run"], "the config has no key 'runn'; set run={tmp}/run"),
    (["+device=cuda"], "adds a key that exists already"),
]


@pytest.mark.parametrize(("argv", "message"), EVAL_MISTAKES)
def test_eval_mistake_is_one_actionable_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DYT_DEBUG", raising=False)
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, err = attempt("eval", argv, capsys)
    assert_one_line(code, err, message.format(tmp=tmp_path))


def test_the_table_has_sixty_distinct_mistakes():
    rows = [tuple(r.values[0]) if hasattr(r, "values") else tuple(r[0]) for r in TRAIN_MISTAKES]
    assert len(set(rows)) == len(rows) and len(rows) + len(EVAL_MISTAKES) + len(ITEM_TESTS) >= 60


# ---- the items that are not a command line ------------------------------------------------
def test_debug_lists_every_option_and_the_default_only_the_close_ones(monkeypatch):
    with pytest.raises(pf.UsageError) as info:
        pf.check_command("train", ["norm=dytt"])
    assert "rmsnorm" not in str(info.value) and "DYT_DEBUG=1 lists them" in str(info.value)
    monkeypatch.setenv("DYT_DEBUG", "1")
    with pytest.raises(pf.UsageError, match="options of norm are: .*rmsnorm"):
        pf.check_command("train", ["norm=dytt"])


def test_flags_may_follow_overrides_and_cfg_prints_the_resolved_config():
    assert pf.normalise_argv(["trainer.progress=log", "-m", "norm=dyt,layernorm"]) == [
        "-m",
        "trainer.progress=log",
        "norm=dyt,layernorm",
    ]
    assert pf.normalise_argv(["norm=dyt", "--cfg", "job"]) == ["--cfg", "job", "--resolve", "norm=dyt"]
    assert pf.normalise_argv(["--cfg", "job", "--resolve"]) == ["--cfg", "job", "--resolve"]
    assert pf.normalise_argv(["--cfg", "hydra"]) == ["--cfg", "hydra"]  # Hydra's own config does not resolve alone


def test_open_groups_accept_added_keys():
    cfg = pf.check_command("train", ["+norm.sites.attn.alpha_init=0.8", "norm=layernorm", "+model.sigma_reparam=true"])
    assert cfg.norm.sites.attn.alpha_init == 0.8 and cfg.model.sigma_reparam is True


def test_unreadable_audio_is_the_error_not_a_warning(tmp_path):
    from dyt.data.audio import list_audio

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(ValueError) as info:
        list_audio(["corpus"], str(tmp_path), 16000)
    message = str(info.value)
    assert "none of the 1 audio file(s)" in message and "a.wav" in message and "no .flac" not in message


def test_a_pickle_in_the_dna_cache_is_refused_naming_the_file(tmp_path):
    from dyt.data.dna import Genome

    fasta = tmp_path / "g.fa"
    fasta.write_text(">chr1\nACGTACGTNNACGT\n")
    Genome.build([fasta], tmp_path / "cache")
    np.save(tmp_path / "cache" / "runs.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(
        ValueError, match=rf"refusing to read the genome cache file {tmp_path}/cache/runs.npy: .*pickled"
    ):
        Genome(tmp_path / "cache")


def test_a_shortened_stage_one_is_named_in_the_fine_tune_error(tmp_path):
    from dyt.engine.weights import InitFromError, _variants_hint

    short = tmp_path / "runs" / "mae_digits+trainer.max_steps=5" / "dyt" / "seed0"
    short.mkdir(parents=True)
    hint = _variants_hint(tmp_path / "runs" / "mae_digits" / "dyt" / "seed0")
    assert f"init_from={short}" in hint
    assert "point init_from= at" in _variants_hint(tmp_path / "runs" / "other" / "dyt" / "seed0")
    assert issubclass(InitFromError, RuntimeError)


def test_a_global_batch_the_world_cannot_split_is_one_line():
    from dyt.engine.sampler import plan_batch

    with pytest.raises(ValueError) as info:
        plan_batch(65, None, 2)
    assert "\n" not in str(info.value) and "65" in str(info.value)


def test_a_failed_start_removes_the_run_dir_it_created_but_not_an_earlier_run(tmp_path, capsys, no_training):
    new = tmp_path / "new" / "deeper" / "run"
    code, err = attempt("train", ["data=imagenet", f"data.root={tmp_path}/nope", f"run_dir={new}"], capsys)
    assert code == 2 and not (tmp_path / "new").exists(), err
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    code, err = attempt("train", ["data=imagenet", f"data.root={tmp_path}/nope", f"run_dir={old}"], capsys)
    assert code == 2 and (old / "checkpoints").is_dir()


def test_train_py_end_to_end_one_line_resolved_cfg_and_no_debris(tmp_path):
    """Three starts of train.py itself: a typo, --cfg after an override, a failing start."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DYT_DEBUG", None)

    def run(*args):
        return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)

    out = run("norm=dytt")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: "), out.stderr
    out = run("trainer.progress=log", "--cfg", "job")
    assert out.returncode == 0 and "${" not in out.stdout and "progress: log" in out.stdout, out.stderr
    created = tmp_path / "runs"
    out = run("data=imagenet", f"data.root={tmp_path}/nope", f"run_dir={created}/x/seed0")
    assert out.returncode == 2 and "error: data.root=" in out.stderr
    assert not created.exists(), sorted(str(p) for p in created.rglob("*"))


ITEM_TESTS = [
    test_unreadable_audio_is_the_error_not_a_warning,
    test_a_pickle_in_the_dna_cache_is_refused_naming_the_file,
    test_a_shortened_stage_one_is_named_in_the_fine_tune_error,
    test_a_global_batch_the_world_cannot_split_is_one_line,
]
