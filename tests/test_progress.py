"""Progress a person can read: a bar per suite attack, Square by query blocks, silent when asked."""

from __future__ import annotations

import torch

from sparring import progress
from sparring.attacks import PGD, Square
from sparring.evaluate import evaluate
from sparring.threat import LinfBall


def test_square_reports_progress_by_query_blocks(trained_mlp, digits) -> None:
    x, y = digits[1].x[:8], digits[1].y[:8]
    seen: list[tuple[int, int]] = []
    with progress.listening(lambda done, total: seen.append((done, total))):
        Square(queries=300)(trained_mlp, x, y, LinfBall(eps=0.05), generator=torch.Generator().manual_seed(0))
    assert seen and all(total == 300 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen) and seen[0][0] == 0
    calls = len(seen)
    progress.report(1, 2)  # after the block the listener is gone: nothing reaches it
    assert len(seen) == calls


class _Recorder:
    """Stands in for rich: records what the bars are told."""

    def __init__(self) -> None:
        self.updates: dict[int, list[dict]] = {}
        self.tasks: dict[int, object] = {}

    def add_task(self, label, total, note):
        task = len(self.updates)
        self.updates[task] = [{"label": label, "total": total}]
        self.tasks[task] = type("T", (), {"fields": {}})()
        return task

    def update(self, task, **fields):
        self.updates[task].append(fields)
        self.tasks[task].fields.update({k: v for k, v in fields.items() if k not in ("completed",)})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_evaluation_draws_a_bar_per_suite_attack_and_the_curve(trained_mlp, digits, monkeypatch) -> None:
    recorder = _Recorder()

    def enter(self):
        self._bar = recorder
        self._tasks = [recorder.add_task(label, total=self.n_batches, note="") for label in self.labels]
        return self

    monkeypatch.setattr(progress.EvalBars, "__enter__", enter)
    monkeypatch.setattr(progress.EvalBars, "__exit__", lambda self, *exc: None)
    data = digits[1].subset(torch.arange(40))
    evaluate(trained_mlp, data, LinfBall(eps=0.1), suite=[PGD(steps=3), Square(queries=200)], eps_curve=[0, 0.1],
             batch_size=16, progress=True)
    labels = [updates[0]["label"] for updates in recorder.updates.values()]
    assert labels == ["pgd", "square", "ε-curve"]
    for updates in recorder.updates.values():
        assert updates[0]["total"] == 3  # 40 points in batches of 16
        assert max(u.get("completed", 0) for u in updates) == 3
    square = recorder.updates[1]
    fractions = [u["completed"] for u in square if "completed" in u and u["completed"] % 1]
    assert fractions, "Square moves its bar within a batch, by query blocks"
    assert any("broke" in str(u.get("note", "")) for u in recorder.updates[0])


def test_evaluation_is_silent_when_asked_and_off_a_terminal(trained_mlp, digits, monkeypatch, capsys) -> None:
    entered: list[bool] = []
    monkeypatch.setattr(progress.EvalBars, "__enter__", lambda self: entered.append(True) or self)
    data = digits[1].subset(torch.arange(16))
    evaluate(trained_mlp, data, LinfBall(eps=0.1), suite=[PGD(steps=2)], eps_curve=[], progress=False)
    evaluate(trained_mlp, data, LinfBall(eps=0.1), suite=[PGD(steps=2)], eps_curve=[])  # pytest: not a terminal
    assert entered == [] and capsys.readouterr().err == ""
    assert progress.interactive() is False
