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


def direct_loglikelihood(model, tokenizer, context: str, continuation: str, max_length: int = 64) -> float:
    """log p(continuation | context) from the model's logits, the window cut to max_length + 1 tokens."""
    ctx, whole = tokenizer.encode(context), tokenizer.encode(context + continuation)
    window = whole[-(max_length + 1) :]
    first = len(window) - (len(whole) - len(ctx))  # index in window of the first continuation token
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([window[:-1]])), dim=-1)[0]
    return sum(logp[i - 1, window[i]].item() for i in range(first, len(window)))


def loglikelihoods(lm: DytLM, pairs: list[tuple[str, str]]) -> list[float]:
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    return [score for score, _ in lm.loglikelihood(requests)]


def test_loglikelihood_is_the_sum_of_continuation_logprobs(model, tokenizer):
    lm = DytLM(model, tokenizer, max_length=64, batch_size=2)
    pairs = [("def add(a, b):", " return a + b"), ("import", " os"), ("class Foo", "(object):")]
    for (context, continuation), score in zip(pairs, loglikelihoods(lm, pairs)):
        want = direct_loglikelihood(model, tokenizer, context, continuation)
        assert math.isclose(score, want, rel_tol=1e-5, abs_tol=1e-5)


def test_long_continuation_is_scored_whole_or_refused_never_cut(model, tokenizer):
    context, continuation = "def add(a, b):", " return a + b + c + d + e + f + g"
    n_cont = len(tokenizer.encode(context + continuation)) - len(tokenizer.encode(context))
    assert n_cont > 8
    # max_length = the continuation's length: the context is cut, the continuation scored whole
    (score,) = loglikelihoods(DytLM(model, tokenizer, max_length=n_cont), [(context, continuation)])
    want = direct_loglikelihood(model, tokenizer, context, continuation, max_length=n_cont)
    assert math.isclose(score, want, rel_tol=1e-5, abs_tol=1e-5)
    # shorter: it cannot be scored whole; lm-eval's HFLM refuses it, and so do we (no silent cut)
    with pytest.raises(ValueError, match=rf"continuation of {n_cont} tokens is longer than .*max_length=8"):
        loglikelihoods(DytLM(model, tokenizer, max_length=8), [(context, continuation)])


def test_evaluate_lm_accuracy_is_the_argmax_of_loglikelihoods(model, tokenizer, tmp_path):
    """Accuracy against a hand-computed argmax, with the model's favourite choice placed at varied
    indices: a bridge that always picked the first (or last) choice would score 0.25 (0.5), not 0.75."""
    questions = [
        ("x = 1 +", [" 1", " import", " class"]),
        ("def f(self):", [" return", " )", " ]"]),
        ("for i in", [" range(3):", " def", " =="]),
        ("import", [" os", " while", " +"]),
    ]
    best_at, docs = [0, 1, 2, 1], []
    for (question, choices), index in zip(questions, best_at):
        scores = [direct_loglikelihood(model, tokenizer, question, " " + c.lstrip()) for c in choices]
        ranked = sorted(choices, key=lambda c: -scores[choices.index(c)])
        ordered = ranked[1:]
        ordered.insert(index, ranked[0])  # the model's favourite at position `index`
        docs.append({"question": question, "choices": [c.lstrip() for c in ordered], "answer": index})
    docs[3]["answer"] = (best_at[3] + 1) % 3  # one question the model gets wrong
    assert [d["answer"] for d in docs] == [0, 1, 2, 2]

    def write_task(name: str, rows: list[dict]) -> None:
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in rows))
        (tmp_path / f"{name}.yaml").write_text(TASK_YAML.format(name=name, path=data))

    write_task("dyt_toy_a", docs)
    write_task("dyt_toy_b", docs[:2])
    scores = evaluate_lm(
        model, tokenizer, ["dyt_toy_a", "dyt_toy_b"], max_length=64, include_path=str(tmp_path), include_defaults=False
    )
    assert scores == {"lm_eval/dyt_toy_a": 0.75, "lm_eval/dyt_toy_b": 1.0, "lm_eval/score": 0.875}


def test_the_paper_score_has_fifteen_tasks():
    assert len(set(PAPER_TASKS)) == 15
