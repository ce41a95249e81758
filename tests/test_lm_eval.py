"""lm-evaluation-harness bridge (dyt.metrics.lm_eval): our model scored in process on local tasks."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dyt.data.text import load_tokenizer, tokenizer_path
from dyt.metrics.lm_eval import PAPER_TASKS, DytLM, evaluate_lm
from models.llama import llama_tiny

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    cfg = OmegaConf.load("configs/data/text_stdlib.yaml")
    cfg.merge_with(
        {
            "cache_dir": str(tmp_path_factory.mktemp("cache")),
            "vocab_size": 300,
            "max_docs": 20,
            "tokenizer_train_docs": 20,
        }
    )
    return load_tokenizer(tokenizer_path(cfg))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return llama_tiny(norm={"name": "dyt", "impl": "eager"}, vocab_size=300).eval()


def test_loglikelihood_is_the_sum_of_continuation_logprobs(model, tokenizer):
    from lm_eval.api.instance import Instance

    lm = DytLM(model, tokenizer, max_length=64, batch_size=2)
    pairs = [("def add(a, b):", " return a + b"), ("import", " os"), ("class Foo", "(object):")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    got = [score for score, _ in lm.loglikelihood(requests)]
    for (context, continuation), score in zip(pairs, got):
        ctx, whole = tokenizer.encode(context), tokenizer.encode(context + continuation)
        tokens = torch.tensor([whole])
        with torch.no_grad():
            logp = F.log_softmax(model(tokens[:, :-1]), dim=-1)[0]
        want = sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))
        assert math.isclose(score, want, rel_tol=1e-5, abs_tol=1e-5)


def test_evaluate_lm_averages_local_tasks_into_the_score(model, tokenizer, tmp_path):
    docs = [
        {"question": "x = 1 +", "choices": [" 1", " import", " class"], "answer": 0},
        {"question": "def f(self):", "choices": [" return", " )", " ]"], "answer": 0},
        {"question": "for i in", "choices": [" range(3):", " def", " =="], "answer": 0},
    ]
    for name, rows in (("dyt_toy_a", docs), ("dyt_toy_b", docs[:2])):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in rows))
        (tmp_path / f"{name}.yaml").write_text(TASK_YAML.format(name=name, path=data))
    scores = evaluate_lm(
        model, tokenizer, ["dyt_toy_a", "dyt_toy_b"], max_length=64, include_path=str(tmp_path), include_defaults=False
    )
    assert set(scores) == {"lm_eval/dyt_toy_a", "lm_eval/dyt_toy_b", "lm_eval/score"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["lm_eval/score"] == pytest.approx((scores["lm_eval/dyt_toy_a"] + scores["lm_eval/dyt_toy_b"]) / 2)


def test_the_paper_score_has_fifteen_tasks():
    assert len(set(PAPER_TASKS)) == 15
