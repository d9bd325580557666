"""The main job, once for every task: config → data → model → training → evaluation → run folder.

What differs between domains is a task's (:mod:`sparring.tasks`: ``classification`` here in the core, ``points``,
``recsys`` and ``language`` in their domains); the run folder is this module's. A run folder always holds the
resolved ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (with the final ``model.safetensors`` and
``model.json``), ``report.json`` and ``report.html`` (a classifier's also ``examples.npz``), and sparring's marker
``.sparring-run.json``; while a process writes it, its lock (:mod:`sparring.runtime.run_folder`).
``--overwrite`` clears only marked folders, and only the files sparring wrote. ``run_demo`` trains a
standard and a PGD-AT small CNN on the embedded digits and writes a comparison page.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from sparring.attacks import Attack
from sparring.config import load_any_config, load_config
from sparring.data import Dataset
from sparring.errors import RunFolderError, SparringError
from sparring.evaluate import build_report, describe_data, evaluate, parameters, write_run_report
from sparring.files import atomic_write_text
from sparring.models.fit import check_model_accepts
from sparring.report import write_comparison, write_json
from sparring.report.views import VIEWS, header
from sparring.runtime.distributed import broadcast, is_main_process
from sparring.runtime.run_folder import MARKER, RunFolder, folder_lock, not_ours
from sparring.tasks import TASKS, Job, Task
from sparring.threat import ThreatModel

log = logging.getLogger(__name__)
Notify = Callable[[str], None]


def check_run_dir(out: Path, *, resume: bool = False) -> None:
    """Refuse, reading only, a path that is a file or a non-empty folder sparring did not create.

    A folder is sparring's by its marker (``.sparring-run.json``), never by the names of its files. For
    ``resume``, a folder an older sparring wrote (``checkpoints/latest.json`` or ``eval_state/manifest.json``,
    no marker) is accepted too: :func:`prepare_run_dir` marks it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a folder; choose another --out")
    folder = RunFolder(out)
    if folder.is_empty() or folder.is_sparring() or (resume and _older_sparring(out)):
        return
    raise RunFolderError(not_ours(out))


def prepare_run_dir(out: Path, *, overwrite: bool = False, resume: bool = False, kind: str = "run") -> Path:
    """Make ``out`` ready for a run without ever deleting something sparring did not write.

    An existing non-empty folder is an error unless ``resume`` (continue it) or ``overwrite`` (clear sparring's
    files in it, only if it carries sparring's marker; other files stay, with a warning). The folder gets a
    fresh marker of ``kind``. The caller holds the folder's lock (:func:`claim_run_dir` does both).
    """
    out = Path(out)
    check_run_dir(out, resume=resume)
    folder = RunFolder(out)
    if resume:  # a marked folder without checkpoints (killed before its first one) starts again from epoch 0
        if kind == "run" and not (out / "checkpoints").is_dir() and not folder.is_sparring():
            raise RunFolderError(f"cannot resume: {out} has no checkpoints/ folder")
        if not folder.is_sparring():
            log.warning("%s was written by an older sparring (no %s); marking it as a sparring %s folder",
                        out, MARKER, kind)
            RunFolder.create(out, kind=kind)
        return out
    if not folder.is_empty():
        if not overwrite:
            what = "demo" if kind == "demo" else "run"
            raise RunFolderError(f"{what} folder {out} already exists; pass --overwrite to replace it or choose --out")
        kept = folder.clear_ours()
        if kept:
            log.warning("--overwrite left %d file(s) in %s that sparring did not write: %s", len(kept), out,
                        ", ".join(kept))
    RunFolder.create(out, kind=kind)
    return out


@contextlib.contextmanager
def claim_run_dir(out: Path, *, kind: str = "run", overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Hold ``out`` for this run: refuse a foreign folder, take its lock, prepare it; the lock goes on exit.

    Under ``torch.distributed`` rank 0 does this and every rank learns its verdict (no rank waits forever
    for a rank 0 that refused).
    """
    out = Path(out)
    with contextlib.ExitStack() as stack:
        failure: Exception | None = None
        if is_main_process():
            try:
                check_run_dir(out, resume=resume)  # before the lock: nothing is written into a foreign folder
                stack.enter_context(folder_lock(out))
                prepare_run_dir(out, overwrite=overwrite, resume=resume, kind=kind)
            except (SparringError, OSError) as exc:
                failure = exc
        message = broadcast(None if failure is None else str(failure))  # also a barrier
        if failure is not None:
            raise failure
        if message is not None:
            raise RunFolderError(message)
        yield out


def _older_sparring(out: Path) -> bool:
    return (out / "checkpoints" / "latest.json").is_file() or (out / "eval_state" / "manifest.json").is_file()


def run_experiment(
    config: Any,
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    evaluate_after: bool = True,
    progress: bool = True,
    notify: Notify | None = None,
) -> dict[str, Any] | None:
    """Run any task's config (``config.task``: classification, points, recsys, language) into the run folder
    ``out``; returns report.json's dict (None when ``evaluate_after`` is off, and on the other processes of a
    multi-process run: rank 0 writes the folder).

    The pipeline, once for every task: prepare the job (data, model, checks; nothing written yet), claim the
    folder (a foreign folder is refused, a second process locked out, ``overwrite`` clears only sparring's files),
    write the resolved ``config.yaml``, train (checkpoints and ``metrics.jsonl`` through the Trainer; ``resume``
    continues from the newest complete checkpoint), save the model, evaluate, and write ``report.json`` (the common
    header plus the task's blocks) and ``report.html`` (the task's view).
    """
    notify = notify or (lambda message: None)
    task = TASKS.get(config.task)()
    job = task.prepare(config)
    main = is_main_process()  # under torchrun / accelerate launch: rank 0 writes, every rank trains and evaluates
    try:
        with claim_run_dir(out, kind="run", overwrite=overwrite, resume=resume) as out:
            if main and not (resume and (out / "config.yaml").is_file()):
                atomic_write_text(out / "config.yaml", yaml.safe_dump(job.resolved(), sort_keys=False))
            notify(f"{job.headline()} → {out}")
            job.train(out, resume=resume, progress=progress)
            if main:
                job.save_model(out / "checkpoints")
            if not evaluate_after:
                return None
            notify("evaluating")
            body = job.evaluate(out, progress=progress and main, notify=notify)
            if not main or body is None:
                return None
            return write_task_report(out, task, job, body, run_name=config.name or out.name)
    finally:
        job.close()


def write_task_report(out: Path, task: Task, job: Job, body: dict[str, Any], *, run_name: str) -> dict[str, Any]:
    """report.json (the common header, then the task's blocks) and report.html (the task's view) in ``out``."""
    report = {**header(task=task.name, run_name=run_name, threat=job.threat()), **body}
    write_json(report, out / "report.json")
    VIEWS.get(task.view).write_html(out)
    return report


def evaluate_run(
    run_dir: Path,
    out: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    notify: Notify | None = None,
) -> dict[str, Any] | None:
    """Evaluate a finished run of any task again (``sparring eval --model RUN``): its ``config.yaml`` says the task
    and how to rebuild data and model, its ``checkpoints/`` hold the trained model; the report goes to a new run
    folder ``out`` (the run itself is never touched). Returns report.json's dict (None on other processes)."""
    notify = notify or (lambda message: None)
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "checkpoints").is_dir():
        raise RunFolderError(f"{run_dir}: not a finished sparring run (it needs config.yaml and checkpoints/)")
    if Path(out).resolve() == run_dir.resolve():
        raise RunFolderError(f"--out {out} is the run being evaluated; choose another folder")
    config = load_any_config(run_dir / "config.yaml")
    task = TASKS.get(config.task)()
    job = task.prepare(config)
    job.load_trained(run_dir / "checkpoints")
    try:
        with claim_run_dir(Path(out), kind="eval", overwrite=overwrite) as out:
            notify(f"evaluating the {task.name} run {run_dir} → {out}")
            body = job.evaluate(out, progress=progress and is_main_process(), notify=notify)
            if not is_main_process() or body is None:
                return None
            return write_task_report(out, task, job, {**body, "evaluated_run": str(run_dir)}, run_name=out.name)
    finally:
        job.close()


def evaluate_model(
    model: nn.Module,
    test_data: Dataset,
    threat: ThreatModel,
    out: Path,
    *,
    model_name: str,
    suite: str | list[Attack] = "standard",
    eps_curve: list[float] | None = None,
    max_samples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    precision: str = "fp32",
    overwrite: bool = False,
    notify: Notify | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    **detection: Any,
) -> dict[str, Any] | None:
    """``sparring eval``: evaluate a given model and write a run folder (no training section).

    The evaluation state goes to ``out/eval_state`` as batches finish: the same command run again on
    the same ``out`` continues where it stopped. Under ``torch.distributed`` every rank evaluates its
    shard and rank 0 writes the folder (other ranks return None).
    """
    out = Path(out)
    check_model_accepts(model, test_data)  # one line naming both shapes, before any folder is touched
    resuming = (out / "eval_state" / "manifest.json").is_file() and not overwrite
    with claim_run_dir(out, kind="eval", overwrite=overwrite, resume=resuming):
        if resuming and notify is not None and is_main_process():
            notify(f"resuming the evaluation in {out / 'eval_state'}")
        evaluation = evaluate(
            model, test_data, threat, suite=suite, eps_curve=eps_curve, max_samples=max_samples,
            batch_size=batch_size, seed=seed, precision=precision, state_dir=out / "eval_state", notify=notify,
            progress=progress, **detection,
        )
        if not is_main_process():
            return None
        report = build_report(
            evaluation, run_name=out.name, objective=None,
            model={"name": model_name, "parameters": parameters(model)},
            data=describe_data(None, test_data, evaluation), training=None,
        )
        write_run_report(out, report, evaluation)
        return report


def run_demo(out: Path, *, overwrite: bool = False, progress: bool = True, notify: Notify | None = None) -> Path:
    """Train a standard and a PGD-AT small CNN on digits; one run folder each plus ``comparison.html``."""
    with claim_run_dir(Path(out), kind="demo", overwrite=overwrite) as out:
        runs = []
        for name in ("standard", "pgd_at"):
            config = load_config(demo_config_path(name))
            run_experiment(config, out / name, progress=progress, notify=notify)
            runs.append(out / name)
        return write_comparison(runs, out / "comparison.html")


def demo_config_path(name: str) -> Path:
    """Path of a config shipped with the package (``sparring/configs/demo_<name>.yaml``)."""
    return Path(str(resources.files("sparring") / "configs" / f"demo_{name}.yaml"))



__all__ = ["run_experiment", "run_demo", "evaluate_model", "evaluate_run", "prepare_run_dir", "claim_run_dir",
           "check_run_dir"]
