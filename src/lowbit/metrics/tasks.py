"""Accuracy on the user's own labelled data, always with flips (answers that changed from the
reference), because accuracy alone hides them: two models at 70% can disagree on a fifth of the items.

Two JSONL shapes, one item per line:

    {"question": "...", "choices": ["...", "..."], "answer": 1}    multiple choice, causal LMs:
        each choice scored by the sum of its tokens' log-probabilities after the question
        (``answer``: the index, or the text of the right choice)
    {"text": "...", "label": "spam"}                                classification, encoders:
        nearest class centroid of the reference model's mean-pooled embeddings (cosine); the
        same centroids score every candidate, so a flip is an embedding that moved class
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import InputError

MC, CLASSIFICATION = "multiple-choice", "classification"


@dataclass
class Task:
    kind: str
    items: list[dict[str, Any]]
    name: str

    @property
    def answers(self) -> list[int]:
        return [it["_answer"] for it in self.items]


def task_kind(path: str | Path) -> str | None:
    """MC or CLASSIFICATION when ``path`` is a JSONL file of that shape, else None (plain text)."""
    p = Path(path)
    if p.suffix != ".jsonl" or not p.is_file():
        return None
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    raise InputError(f"{p}: first line is not JSON") from None
                if not isinstance(first, dict):
                    return None
                if {"question", "choices", "answer"} <= first.keys():
                    return MC
                if {"text", "label"} <= first.keys():
                    return CLASSIFICATION
                return None
    return None


def load_task(path: str | Path, limit: int | None = None) -> Task:
    p = Path(path)
    kind = task_kind(p)
    if kind is None:
        raise InputError(f"{p}: not a multiple-choice or classification JSONL file")
    items = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                it = json.loads(line)
            except ValueError:
                raise InputError(f"{p}:{n}: not JSON") from None
            items.append(_check(it, kind, f"{p}:{n}"))
            if limit and len(items) >= limit:
                break
    if len(items) < 2:
        raise InputError(f"{p}: {len(items)} item(s); accuracy needs at least 2")
    if kind == CLASSIFICATION:
        labels = sorted({it["label"] for it in items}, key=str)
        if len(labels) < 2:
            raise InputError(f"{p}: every item has label {labels[0]!r}; classification needs two classes or more")
        for it in items:
            it["_answer"] = labels.index(it["label"])
    return Task(kind, items, p.name)


def _check(it: Any, kind: str, where: str) -> dict[str, Any]:
    if not isinstance(it, dict):
        raise InputError(f"{where}: expected a JSON object")
    if kind == MC:
        ch, ans = it.get("choices"), it.get("answer")
        if not isinstance(it.get("question"), str) or not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
            raise InputError(f'{where}: needs "question" (text) and "choices" (two texts or more)')
        if isinstance(ans, str) and ans in ch:
            ans = ch.index(ans)
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(ch):
            raise InputError(f'{where}: "answer" must be a choice index 0..{len(ch) - 1} or one of the choices')
        return {**it, "_answer": ans}
    if not isinstance(it.get("text"), str) or "label" not in it:
        raise InputError(f'{where}: needs "text" and "label"')
    return dict(it)


@dataclass
class TaskScore:
    predictions: list[int]
    accuracy: float
    flips: int | None = None  # answers that differ from the reference's
    flips_to_wrong: int | None = None
    flips_to_right: int | None = None

    def against(self, ref: TaskScore, answers: list[int]) -> TaskScore:
        changed = [i for i, (a, b) in enumerate(zip(self.predictions, ref.predictions)) if a != b]
        self.flips = len(changed)
        self.flips_to_wrong = sum(1 for i in changed if ref.predictions[i] == answers[i])
        self.flips_to_right = sum(1 for i in changed if self.predictions[i] == answers[i])
        return self


@torch.inference_mode()
def score_mc(model: nn.Module, tokenizer: Any, task: Task) -> TaskScore:
    """Each choice's summed log-probability after the question (a space joins them)."""
    from lowbit.modules.kernel_mode import kernel_mode

    preds = []
    with kernel_mode(model, "dequant"):
        for it in task.items:
            q = tokenizer(it["question"], add_special_tokens=False)["input_ids"]
            if not q:
                raise InputError(f"{task.name}: empty question")
            scores = []
            for choice in it["choices"]:
                c = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([q + c])
                logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
                tgt = ids[0, 1:]
                scores.append(float(logp.gather(1, tgt[:, None])[len(q) - 1 :].sum()))
            preds.append(max(range(len(scores)), key=scores.__getitem__))
    return _score(preds, task)


def class_centroids(ref_emb: torch.Tensor, task: Task) -> torch.Tensor:
    labels = torch.tensor(task.answers)
    cents = torch.stack([ref_emb[labels == k].mean(0) for k in range(int(labels.max()) + 1)])
    return F.normalize(cents, dim=-1)


def score_classification(emb: torch.Tensor, centroids: torch.Tensor, task: Task) -> TaskScore:
    preds = (F.normalize(emb, dim=-1) @ centroids.T).argmax(1).tolist()
    return _score(preds, task)


def _score(preds: list[int], task: Task) -> TaskScore:
    right = sum(1 for p, a in zip(preds, task.answers) if p == a)
    return TaskScore(preds, right / len(preds))
