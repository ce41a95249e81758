"""Zero-shot evaluation of our language models with lm-evaluation-harness, in process.

Paper Table 4 reports a "score": the average zero-shot accuracy over 15 lm-eval tasks, following
OpenLLaMA (paper Sec. 5). ``DytLM`` adapts any causal model returning logits (our ``Llama`` with any
norm, no Hugging Face export needed) and its tokenizer to lm-eval's ``LM`` interface; ``evaluate_lm``
runs the tasks and averages one metric per task into ``lm_eval/score``; ``lm_eval_hook`` is what
``eval.py`` calls with a run's config and trained model.

The paper does not say which metric of each task enters the average; we use ``acc`` everywhere except
ReCoRD, which has none (``em``). ``SCORE_METRICS`` is the one place to change that.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from torch import nn

# [P2] App. A: the 15 zero-shot tasks of Table 4's score.
PAPER_TASKS = (
    "anli_r1",
    "anli_r2",
    "anli_r3",
    "arc_challenge",
    "arc_easy",
    "boolq",
    "hellaswag",
    "openbookqa",
    "piqa",
    "record",
    "rte",
    "truthfulqa_mc1",
    "truthfulqa_mc2",
    "wic",
    "winogrande",
)
SCORE_METRICS = {"record": "em"}  # every other task: "acc"


class DytLM(TemplateLM):
    """lm-eval ``LM`` over a causal model ``tokens (B, T) -> logits (B, T, V)`` and a ``transformers`` tokenizer.

    A context and continuation longer than ``max_length`` together lose the start of the context; the
    continuation is always scored whole. A continuation longer than ``max_length`` cannot be, and is
    refused with a ``ValueError``, as lm-eval's own ``HFLM`` refuses it (``huggingface.py``,
    ``_loglikelihood_tokens``). Documents are scored in batches of ``batch_size``, right-padded (a causal
    model's logits at a position do not depend on later padding).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        max_length: int,
        batch_size: int = 8,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, int(max_length)
        self.batch_size, self._device = int(batch_size), torch.device(device)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Context of a continuation with an empty context: BOS when the tokenizer has one, else EOS."""
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    @torch.no_grad()
    def _logprobs(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Log-softmax of the next-token logits of each token sequence, (len - 1, V) each, in fp32."""
        out = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            width = max(len(s) for s in chunk) - 1
            tokens = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, seq in enumerate(chunk):
                tokens[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            logp = F.log_softmax(self.model(tokens.to(self._device)).float(), dim=-1).cpu()
            out.extend(logp[row, : len(seq) - 1] for row, seq in enumerate(chunk))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        was_training = self.model.training
        self.model.eval()
        sequences, targets = [], []
        for _, context, continuation in requests:
            if len(continuation) > self.max_length:
                raise ValueError(
                    f"an lm-eval continuation of {len(continuation)} tokens is longer than the model's context "
                    f"max_length={self.max_length}, so it cannot be scored whole (lm-eval's HFLM refuses it too); "
                    "evaluate with a longer data.seq_len, or leave this task out (task.lm_eval.tasks)"
                )
            # up to max_length + 1 tokens: the first is never predicted, the continuation always is
            # (contexts are never empty: lm-eval gives an empty one the prefix token)
            sequences.append((context + continuation)[-(self.max_length + 1) :])
            targets.append(torch.tensor(continuation))
        results = []
        for logp, target in zip(self._logprobs(sequences), targets, strict=True):
            logp = logp[-len(target) :]
            results.append((logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())))
        self.model.train(was_training)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents, scored in disjoint windows of ``max_length`` tokens."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        totals = []
        for (text,) in (req.args for req in requests):
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            totals.append(sum(score for score, _ in scores))
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until a stop string or ``max_gen_toks`` (default 256) new tokens."""
        was_training = self.model.training
        self.model.eval()
        outputs = []
        for context, gen_kwargs in (req.args for req in requests):
            until = gen_kwargs.get("until") or [self.tokenizer.decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            tokens = self.tok_encode(context)
            new: list[int] = []
            text = ""
            for _ in range(int(gen_kwargs.get("max_gen_toks", 256))):
                window = torch.tensor([(tokens + new)[-self.max_length :]], device=self._device)
                nxt = int(self.model(window)[0, -1].argmax())
                if nxt == self.eot_token_id:
                    break
                new.append(nxt)
                text = self.tokenizer.decode(new)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
        self.model.train(was_training)
        return outputs


def evaluate_lm(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str] | tuple[str, ...] | None = None,
    *,
    max_length: int,
    batch_size: int = 8,
    num_fewshot: int = 0,
    limit: int | float | None = None,
    include_path: str | None = None,
    include_defaults: bool = True,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Run lm-eval ``tasks`` (default: the paper's 15) on ``model``; returns ``lm_eval/<task>`` (the task's
    score metric, see ``SCORE_METRICS``) and ``lm_eval/score``, their average (paper Table 4).

    ``include_path`` adds a directory of task YAMLs; ``include_defaults=False`` skips indexing lm-eval's
    built-in tasks (seconds of start-up) when only those local tasks are run."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = list(tasks or PAPER_TASKS)
    lm = DytLM(model, tokenizer, max_length=max_length, batch_size=batch_size, device=device)
    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=0,
    )
    scores = {}
    for task in tasks:
        metric = SCORE_METRICS.get(task, "acc")
        result = out["results"].get(task, {})
        key = f"{metric},none"
        if key not in result:
            raise KeyError(
                f"lm-eval task {task!r} reported no {metric!r}; it reported {sorted(result)}. "
                f"Set its score metric in dyt.metrics.lm_eval.SCORE_METRICS"
            )
        scores[f"lm_eval/{task}"] = float(result[key])
    scores["lm_eval/score"] = sum(scores.values()) / len(scores)
    return scores


def lm_eval_hook(cfg: Any, model: nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
    """What ``eval.py`` calls for a language-model run: ``evaluate_lm`` with the options of
    ``cfg.task.lm_eval``, the run's tokenizer (``cfg.data``) and context length ``cfg.data.seq_len``."""
    from dyt.data.text import load_tokenizer, tokenizer_path

    opts = cfg.task.get("lm_eval") or {}
    tasks = opts.get("tasks")
    return evaluate_lm(
        model,
        load_tokenizer(tokenizer_path(cfg.data)),
        list(tasks) if tasks else None,
        max_length=int(cfg.data.seq_len),
        batch_size=int(opts.get("batch_size", 8)),
        num_fewshot=int(opts.get("num_fewshot", 0)),
        limit=opts.get("limit"),
        include_path=opts.get("include_path"),
        include_defaults=bool(opts.get("include_defaults", True)),
        device=device,
    )
