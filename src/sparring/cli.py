"""The ``sparring`` command line: demo, run, train, eval, attack, compare, report, rate (and ``--version``).

Bad input (a malformed config, a missing file, NaN data, a negative ε, labels out of range, an existing
run folder) ends with one line on stderr naming the problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from sparring.errors import SparringError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Attack, adversarially train and evaluate PyTorch models.",
)
console = Console(stderr=True)
out_console = Console()

OutOption = Annotated[Path | None, typer.Option("--out", help="Run folder to write (default: runs/<name>).")]
OverwriteOption = Annotated[bool, typer.Option(
    "--overwrite", help="Replace what sparring wrote in an existing run folder (it keeps files it did not write).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
EpsOption = Annotated[str, typer.Option("--eps", help="Radius of the threat model in input units: 0.03 or 8/255.")]
NormOption = Annotated[str, typer.Option("--norm", help="linf, l2 or l1 (case-insensitive: Linf, L2, L1).")]
CheckpointOption = Annotated[Path | None, typer.Option(
    "--checkpoint", help="Weights to load into the model: safetensors or a torch.save .pt/.pth/.bin/.ckpt state dict "
    "(read without unpickling code; DataParallel, torch.compile and Lightning key prefixes are handled).")]
MODEL_HELP = (
    "A run folder (RUN or RUN/checkpoints), a registered model name (small_cnn, mlp, preact_resnet18, ...; shaped "
    "by --data, weights from --checkpoint), MODULE:FACTORY or file.py:FACTORY returning the model, or a TorchScript "
    "file (.pt, .ts). See docs/models.md."
)


def _notify(message: str) -> None:
    console.print(f"[dim]·[/dim] {message}")


def _show(report: dict[str, Any], folder: Path) -> None:
    """The summary table of the report's task (its view), then where its page is."""
    from sparring.report.views import DEFAULT_TASK, VIEWS

    out_console.print(VIEWS.get(report.get("task", DEFAULT_TASK)).summary_table(report))
    out_console.print(f"report: {folder / 'report.html'}")


@app.command()
def demo(out: OutOption = None, overwrite: OverwriteOption = False, quiet: QuietOption = False) -> None:
    """Train a standard and a PGD-AT CNN on digits, evaluate both, write reports and a comparison page."""
    from sparring.experiment import run_demo
    from sparring.report import load_report, summary_table

    folder = out or Path("runs/demo")
    page = run_demo(folder, overwrite=overwrite, progress=not quiet, notify=_notify)
    for name in ("standard", "pgd_at"):
        out_console.print(f"[bold]{name}[/bold]")
        out_console.print(summary_table(load_report(folder / name / "report.json")))
    out_console.print(f"comparison: {page}")


ConfigArgument = Annotated[Path, typer.Argument(help="YAML run config.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue a killed run in --out.")]


def _run_config(config: Path, out: Path | None, **kwargs: Any) -> tuple[dict[str, Any] | None, Path]:
    """Read the config of whichever task it names and run it through the one pipeline."""
    from sparring.config import load_any_config
    from sparring.experiment import run_experiment

    cfg = load_any_config(config)
    folder = out or _default_run_folder(config, cfg.name)
    return run_experiment(cfg, folder, notify=_notify, **kwargs), folder


def _default_run_folder(config: Path, name: str | None) -> Path:
    """``runs/<name>``, the name from the config (checked when it was read) or the config file's stem."""
    from sparring.config import RUN_NAME_RULE, is_run_name
    from sparring.errors import ConfigError

    stem = name or config.stem
    if not is_run_name(stem):
        raise ConfigError(
            f"{config}: the default run folder runs/<name> takes its name from the file name, and {stem!r} "
            f"{RUN_NAME_RULE.replace('must be', 'is not')}; set name: in the config or pass --out"
        )
    return Path("runs") / stem


@app.command()
def run(
    config: ConfigArgument, out: OutOption = None, overwrite: OverwriteOption = False, resume: ResumeOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train as configured, then evaluate and write report.json / report.html."""
    report, folder = _run_config(config, out, overwrite=overwrite, resume=resume, progress=not quiet)
    if report is not None:  # None on the other processes of a multi-process run: rank 0 reports
        _show(report, folder)


@app.command()
def train(
    config: ConfigArgument, out: OutOption = None, overwrite: OverwriteOption = False, resume: ResumeOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train only: checkpoints, metrics.jsonl and the final model.safetensors, no evaluation."""
    _, folder = _run_config(config, out, overwrite=overwrite, resume=resume, evaluate_after=False, progress=not quiet)
    out_console.print(f"model: {folder / 'checkpoints' / 'model.safetensors'}")


@app.command(name="eval")
def eval_(
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP + " A run folder of another task (points, recsys, "
                                       "language) is evaluated again by its own task, without --data and --eps.")],
    data: Annotated[str | None, typer.Option(
        "--data", help="digits, cifar10, cifar100 (their test split), a .npz file with x and y (NCHW or NHWC, float "
        "or uint8; evaluated whole, or its x_test/y_test) or an image folder (one sub-folder per class; its test/). "
        "Required unless --model is a run folder of another task.")] = None,
    eps: Annotated[str | None, typer.Option(
        "--eps", help="Radius of the threat model in input units: 0.03 or 8/255. Required with --data.")] = None,
    norm: NormOption = "linf",
    checkpoint: CheckpointOption = None,
    data_root: Annotated[str | None, typer.Option("--data-root", help="Folder or archive of CIFAR.")] = None,
    suite: Annotated[str, typer.Option("--suite", help="fast, standard, plus or rand (EOT).")] = "standard",
    attacks: Annotated[
        str | None, typer.Option("--attacks", help="Comma-separated attack names, run as a cascade instead of --suite.")
    ] = None,
    eps_curve: Annotated[
        str | None, typer.Option("--eps-curve", help="Comma-separated radii of the eps-curve (default 0..2 eps), or "
                                 "'minnorm': the default radii from one minimum-norm (FMN) run per point.")
    ] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32 or bf16 (autocast attacks).")] = "fp32",
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: this process's GPU if any).")
    ] = None,
    max_samples: Annotated[int | None, typer.Option("--max-samples", min=1)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    no_bounds: Annotated[bool, typer.Option("--no-bounds", help="No [0, 1] box (feature spaces).")] = False,
    seed: int = 0,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the model for the attack loops (helps on GPUs and large models).")] = False,
    detector: Annotated[str | None, typer.Option(
        "--detector", help="A saved detector folder (a run's detector/, written by eval.detector in YAML): adds "
        "detection per attack and under an adaptive attack to the report.")] = None,
    detector_lambdas: Annotated[str | None, typer.Option(
        "--detector-lambdas", help="Comma-separated weights of the detector term in the adaptive attack "
        "(default 0,0.1,0.3,1,3,10; 'none': non-adaptive only, and the report says so).")] = None,
    out: OutOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Evaluate a model: clean and robust accuracy, worst case, per class, ε-curve, checks.

    Interrupted? Run the same command again: finished batches are kept in OUT/eval_state.

    Under torchrun or accelerate launch, each process evaluates its shard; the first writes the report.
    """
    from sparring.attacks import build
    from sparring.attacks.cascade import SUITES
    from sparring.data import load_eval_data
    from sparring.errors import ConfigError
    from sparring.experiment import evaluate_model
    from sparring.models.fit import check_model_accepts
    from sparring.models.loading import load_model
    from sparring.runtime.distributed import is_main_process

    task = _run_task(model)
    if task is not None and task != "classification":  # a finished run of another task: its task evaluates it
        from sparring.experiment import evaluate_run

        run_dir = Path(model).parent if Path(model).name == "checkpoints" else Path(model)
        folder = out or Path("runs") / f"eval-{run_dir.resolve().name}"
        report = evaluate_run(run_dir, folder, overwrite=overwrite, progress=not quiet, notify=_notify)
        if report is not None:
            _show(report, folder)
        return
    if data is None or eps is None:
        raise ConfigError(f"{'--data' if data is None else '--eps'} is required to evaluate a model (a run folder of "
                          "another task needs neither)")
    threat = _threat(norm, eps, no_bounds)
    if suite not in SUITES:
        raise ConfigError(f"--suite must be one of {', '.join(SUITES)}, got {suite!r}")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision must be fp32 or bf16, got {precision!r}")
    radii: list[float] | str | None = None
    if eps_curve is not None:
        radii = "minnorm" if eps_curve.strip().lower() == "minnorm" else _floats(eps_curve, "--eps-curve")
    _, test = load_eval_data(data, root=data_root, seed=seed)  # a file is evaluated whole (or its x_test / y_test)
    net = load_model(model, checkpoint=checkpoint, data=test)
    net.to(_device(device))
    if compile_model:  # dynamic shapes: cascades and early stopping attack shrinking subsets of a batch
        from sparring.runtime.compile import compiled

        net = compiled(net, dynamic=None)
    if threat.norm == "l1" and not attacks:  # the suites' APGD and Square are L∞ / L2 attacks
        raise ConfigError("--norm l1 needs --attacks, e.g. --attacks apgd_l1,fab_t (the suites are L∞ / L2)")
    cascade = [build(name.strip()) for name in attacks.split(",")] if attacks else suite
    folder = out or Path("runs") / f"eval-{Path(data).stem}-{threat.norm}-{float(threat.eps):g}"
    main = is_main_process()
    check_model_accepts(net, test)  # a wrong shape is the one line the user sees
    if main and test.layout:
        _notify(f"data: {test.layout}")
    detection: dict[str, Any] = {}
    if detector is not None:
        from sparring.detectors.evaluation import DEFAULT_LAMBDAS, load_detector

        lambdas = (() if detector_lambdas.strip().lower() == "none" else _floats(detector_lambdas, "--detector-lambdas")
                   ) if detector_lambdas is not None else DEFAULT_LAMBDAS
        detection = {"detector": load_detector(detector, net), "detector_lambdas": lambdas}
    report = evaluate_model(
        net, test, threat, folder, model_name=model, suite=cascade, eps_curve=radii, max_samples=max_samples,
        batch_size=batch_size, seed=seed, precision=precision, overwrite=overwrite,
        notify=_notify if main else None, progress=main and not quiet, **detection,
    )
    if report is not None:
        _show(report, folder)


@app.command()
def attack(
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)],
    data: Annotated[str, typer.Option(
        "--data", help="digits, cifar10, cifar100 (their test split), a .npz file with x and y (NCHW or NHWC, float "
        "or uint8) or an image folder (one sub-folder per class), attacked whole.")],
    eps: EpsOption,
    out: Annotated[Path, typer.Option("--out", help="The .npz file to write (x_adv, y, success, loss, meta).")],
    attack_name: Annotated[str, typer.Option("--attack", help="A registered attack (fgsm, pgd, apgd, ...).")] = "pgd",
    norm: NormOption = "linf",
    gradients: Annotated[str, typer.Option("--gradients", help="autograd or predicted.")] = "autograd",
    predictor: Annotated[
        Path | None, typer.Option("--predictor", help="A saved GradientPredictor (with --gradients predicted).")
    ] = None,
    layer: Annotated[str | None, typer.Option(
        "--layer", help="Calibrate a predictor on this layer (module path) from the training split instead.")] = None,
    checkpoint: CheckpointOption = None,
    data_root: Annotated[str | None, typer.Option("--data-root", help="Folder or archive of CIFAR.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ...")] = None,
    no_bounds: Annotated[bool, typer.Option("--no-bounds", help="No [0, 1] box (feature spaces).")] = False,
    seed: int = 0,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write adversarial examples for a whole data set, with per-example success and loss.

    Killed? Run the same command again: finished batches are kept in OUT.state/ until the file is complete.
    """
    from sparring.attacks import build
    from sparring.data import load_eval_data
    from sparring.errors import ConfigError
    from sparring.generate import generate
    from sparring.models.fit import check_model_accepts
    from sparring.models.loading import load_model

    threat = _threat(norm, eps, no_bounds)
    if gradients not in ("autograd", "predicted"):
        raise ConfigError(f"--gradients must be autograd or predicted, got {gradients!r}")
    if gradients == "predicted" and predictor is None and layer is None:
        raise ConfigError("--gradients predicted needs --predictor FILE (a saved predictor) or --layer NAME")
    train, target = load_eval_data(data, root=data_root, seed=seed)  # a file is attacked whole
    net = load_model(model, checkpoint=checkpoint, data=target)
    net.to(_device(device)).eval()
    check_model_accepts(net, target)  # a wrong shape is the one line the user sees
    if target.layout:
        _notify(f"data: {target.layout}")
    settings: dict[str, Any] = {}
    if gradients == "predicted":
        settings["gradients"] = _predicted(net, predictor, layer, train, out, seed)
    attack_obj = build(attack_name, **settings)
    with _progress_bar(f"{attack_name} on {len(target)} points", enabled=not quiet) as advance:
        result = generate(net, target, attack_obj, threat, out, batch_size=batch_size, seed=seed,
                          overwrite=overwrite, progress=advance)
    resumed = f" ({result.resumed_batches} batches resumed)" if result.resumed_batches else ""
    out_console.print(
        f"{result.path}: {result.n} adversarial examples, success rate {result.success_rate:.3f}, "
        f"{result.throughput:,.0f} examples/s{resumed}"
    )


def _run_task(model: str) -> str | None:
    """The task of a run folder given as ``--model`` (RUN or RUN/checkpoints; None when it is not one)."""
    import yaml

    folder = Path(model)
    if folder.name == "checkpoints":
        folder = folder.parent
    path = folder / "config.yaml"
    if not (path.is_file() and (folder / "checkpoints").is_dir()):
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # the model loader names the problem
    task = raw.get("task", "classification") if isinstance(raw, dict) else None
    return task if isinstance(task, str) else None


def _predicted(net: Any, saved: Path | None, layer: str | None, train: Any, out: Path, seed: int) -> Any:
    """The predicted gradient source: a saved predictor, or one calibrated on the training split."""
    from sparring.errors import ConfigError
    from sparring.gradients import GradientPredictor, Predicted

    if saved is not None:
        return Predicted(GradientPredictor.load(saved))
    if train is None:
        raise ConfigError("--layer calibrates on a training split; an .npz is attacked whole: pass --predictor")
    path = out.with_suffix(".predictor.safetensors")
    if path.exists():  # only a predictor sparring saved is replaced (a user's file of that name never is)
        try:
            GradientPredictor.load(path)
        except SparringError:
            raise ConfigError(f"{path} exists and is not a gradient predictor sparring saved; move it or choose "
                              "another --out") from None
    predictor = GradientPredictor(layer=str(layer))
    n = min(len(train), 1000)
    report = predictor.calibrate(net, train.x[:n], train.y[:n], seed=seed)
    predictor.save(path)
    console.print(f"[dim]·[/dim] predictor on layer {layer}: held-out cosine {report['holdout_cosine']:.3f} "
                  f"({n} calibration points, disjoint from the attacked split)")
    return Predicted(predictor)


def _device(name: str | None) -> Any:
    import os

    import torch

    from sparring.errors import ConfigError

    if name is None:
        cuda = torch.cuda.is_available()
        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device must name a torch device such as cpu or cuda:0, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    return device


def _threat(norm: str, eps: str, no_bounds: bool) -> Any:
    """The threat of ``--norm`` / ``--eps`` as written (``Linf``, ``8/255``), one line on anything else."""
    from sparring.errors import ConfigError
    from sparring.threat import make_threat, parse_eps, parse_norm

    name = parse_norm(norm)
    if name not in ("linf", "l2", "l1"):
        raise ConfigError(f"--norm must be linf or l2, or l1 (L1 attacks: apgd_l1, fab_t, fmn), got {norm!r}")
    return make_threat(name, parse_eps(eps, where="--eps"), None if no_bounds else (0.0, 1.0))


def _floats(text: str, option: str) -> list[float]:
    """Comma-separated radii as people write them (``0,2/255,4/255``); one line on anything else."""
    from sparring.threat import parse_eps

    return [parse_eps(v, where=option) for v in text.split(",") if v.strip()]


@contextlib.contextmanager
def _progress_bar(label: str, *, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar over batches; yields the ``progress(done, total)`` callback (None if disabled)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _print_version(value: bool) -> None:
    if value:
        from sparring.version import __version__

        typer.echo(f"sparring {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Attack, adversarially train and evaluate PyTorch models."""


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders holding report.json.", show_default=False)],
    out: Annotated[
        Path,
        typer.Option("--out", help="Page to write; an existing file is replaced only if sparring compare wrote it."),
    ] = Path("comparison.html"),
) -> None:
    """Compare runs: a table per threat model (norm, ε, box) here and an HTML page with their ε-curves; runs of
    other tasks (recsys, language) side by side by their headline figures, a table per task."""
    from sparring.report import compare_runs, comparison_table, write_comparison
    from sparring.report.views import CLASSIFIER_TASKS, compare_headlines, task_of_report

    if any(task_of_report(d) not in CLASSIFIER_TASKS for d in run_dirs):
        page, tables = compare_headlines(run_dirs, out)
        for table in tables:
            out_console.print(table)
        out_console.print(f"comparison: {page}")
        return
    page = write_comparison(run_dirs, out)
    for group in compare_runs(run_dirs):
        out_console.print(comparison_table(group))
    out_console.print(f"comparison: {page}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder holding report.json.")]) -> None:
    """Re-render report.html from a run folder's report.json (by its task's view) and print the summary."""
    from sparring.report.views import view_of

    view = view_of(run_dir)
    data = view.load(run_dir)
    page = view.write_html(run_dir)
    _show(data, page.parent)


@app.command()
def rate(
    paths: Annotated[list[Path], typer.Argument(
        metavar="PATH", show_default=False,
        help="Run or eval folders holding examples.npz; with --summarize, the answers files (JSON) exported by "
        "rating pages.")],
    summarize: Annotated[bool, typer.Option(
        "--summarize", help="Summarise answers files: mean rating per attack, Krippendorff's α, TOST against the "
        "clean/clean controls.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Page to write (default rating.html); an existing file is replaced only if sparring rate "
        "wrote it.")] = None,
    pairs: Annotated[int | None, typer.Option(
        "--pairs", min=1, help="At most this many clean/adversarial pairs, drawn evenly across attacks (default: "
        "all).")] = None,
    controls: Annotated[int | None, typer.Option(
        "--controls", min=0, help="Clean/clean control pairs (default: a quarter of the pairs, at least 4).")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Fixes which pairs, their order and sides (default 0).")] = None,
    scale: Annotated[int | None, typer.Option("--scale", help="Likert points: 5 (default) or 7.")] = None,
    delta: Annotated[float | None, typer.Option(
        "--delta", help="With --summarize: the equivalence bound in Likert points (default 0.5 on a 5-point scale, "
        "0.75 on a 7-point one).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="With --summarize: the level of each one-sided test.")] = 0.05,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="With --summarize: also write the summary as JSON here.")] = None,
) -> None:
    """Human ratings of adversarial examples (SCOOTER-style): write a rating page, or summarise its answers.

    RUN_DIR... writes one self-contained page (--out) of clean/adversarial and clean/clean pairs in a seeded order.

    Each pair asks "How different do these two images look?": 1 = identical ... 5 = very different.

    The page keeps the answers and exports them as JSON; --summarize ANSWERS.json... reads them back.

    The summary: mean rating per attack, Krippendorff's α, a TOST equivalence test against the controls (bounds stated).

    A tool for collecting ratings, not a substitute for a preregistered study.
    """
    from sparring.errors import ConfigError

    if summarize:
        page_only = [name for name, value in (("--out", out), ("--pairs", pairs), ("--controls", controls),
                                              ("--seed", seed), ("--scale", scale)) if value is not None]
        if page_only:
            raise ConfigError(f"{', '.join(page_only)} only make sense when writing a page, not with --summarize")
        from sparring.rating import summarize as summarize_answers
        from sparring.rating import summary_table, write_summary_json
        from sparring.rating.summary import summary_lines

        summary = summarize_answers(paths, delta=delta, alpha=alpha)
        out_console.print(summary_table(summary))
        for line in summary_lines(summary):
            out_console.print(line, highlight=False, soft_wrap=True)
        if json_out is not None:
            write_summary_json(summary, json_out)
            out_console.print(f"summary: {json_out}")
        return
    if delta is not None or json_out is not None or alpha != 0.05:
        raise ConfigError("--delta, --alpha and --json go with --summarize (answers files), not with run folders")
    scale = 5 if scale is None else scale
    if scale not in (5, 7):
        raise ConfigError(f"--scale must be 5 or 7, got {scale}")
    from sparring.rating import write_rating_page
    from sparring.rating.page import describe

    page = write_rating_page(paths, out, pairs=pairs, controls=controls, seed=seed or 0, scale=scale)
    out_console.print(describe(page), highlight=False, soft_wrap=True)


def load_factory(spec: str) -> Any:
    """Resolve ``MODULE:FACTORY`` to a callable (see :func:`sparring.models.loading.load_factory`)."""
    from sparring.models.loading import load_factory as resolve

    return resolve(spec)


def main() -> None:
    """Entry point: run the app behind one error boundary (see :func:`_fail`)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", module="accelerate")
    # peft asks transformers for a deprecated attribute on every LoRA model: noise in a language run's output
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        code = app(standalone_mode=False)  # a command returns None; typer returns an Exit's code (130: Ctrl-C)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            if code == 130:
                console.print("interrupted", highlight=False)
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except BaseException as exc:  # the one boundary: every failure leaves through _fail
        sys.exit(_fail(exc))


def _fail(exc: BaseException) -> int:
    """Say what went wrong and return the exit status: the one error boundary of every command.

    A user-caused failure is one ``error: ...`` line and status 2: a :class:`SparringError` (their config, data,
    model or factory code), an ``OSError`` (their disk: the path, the reason, what to do), out of memory, a usage
    error. Ctrl-C is ``interrupted`` and status 130. Anything else is a bug in sparring: the traceback, then a
    one-line request to report it, and status 1.
    """
    if isinstance(exc, typer.Abort | KeyboardInterrupt):
        cause = exc.__cause__ or exc.__context__  # click turns Ctrl-C (and EOFError) into Abort
        if isinstance(exc, typer.Abort) and cause is not None and not isinstance(cause, KeyboardInterrupt):
            return _fail(cause)
        console.print("interrupted", highlight=False)
        return 130
    message = _user_error(exc)
    if message is not None:
        console.print(f"[bold red]error:[/bold red] {escape(_one_line(message))}", highlight=False, soft_wrap=True)
        return 2
    import traceback

    from sparring.version import __version__

    traceback.print_exception(exc, file=sys.stderr)
    console.print(
        f"[bold red]error:[/bold red] this is a bug in sparring {__version__}; please report it with the command "
        "you ran and the traceback above", highlight=False, soft_wrap=True,
    )
    return 1


def _user_error(exc: BaseException) -> str | None:
    """The line to show for a failure the user caused and can fix; None for a bug in sparring."""
    if isinstance(exc, SparringError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        return _disk_error(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return ("out of memory: lower the batch size (--batch-size, train.batch_size or eval.batch_size) or "
                "--max-samples, or use a machine with more memory")
    if callable(getattr(exc, "format_message", None)) and hasattr(exc, "exit_code"):
        return str(exc.format_message())  # a usage error (typer bundles its own click: match by shape, not class)
    return None


_DISK_HINTS = {  # by errno name (errno.errorcode), so a platform without one of them still imports
    "ENOENT": "check the path",
    "EACCES": "fix its permissions or choose another --out",
    "EPERM": "fix its permissions or choose another --out",
    "EROFS": "choose another --out on a writable disk",
    "ENOSPC": "free space on that disk or choose another --out",
    "EDQUOT": "free space (the disk quota is full) or choose another --out",
    "ENOTDIR": "a part of this path is a file, not a folder: choose another --out",
    "EISDIR": "it is a folder where a file was expected: choose another path",
    "EEXIST": "it is in the way: remove it or choose another --out",
    "ENAMETOOLONG": "choose a shorter path",
    "EMFILE": "raise the open-file limit (ulimit -n)",
    "EPIPE": "the program reading sparring's output stopped early",
}


def _disk_error(exc: OSError) -> str:
    """One line for an ``OSError``: the path(s), the reason and what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    hint = _DISK_HINTS.get(errno.errorcode.get(exc.errno or -1, ""), "check the path and the disk")
    if isinstance(exc, FileNotFoundError) and paths:
        return f"file not found: {paths}; {hint}"
    return f"{paths}: {reason}; {hint}" if paths else f"{reason}; {hint}"


def _one_line(text: str) -> str:
    """``text`` with its line breaks (and the blanks around them) folded into single spaces."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


if __name__ == "__main__":
    main()
