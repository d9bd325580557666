"""The terminal view: a rich table of the headline numbers and the checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.markup import escape
from rich.table import Table

from sparring.report.compare import ThreatGroup
from sparring.report.schema import (
    attack_accuracies,
    failed_checks,
    format_accuracy,
    format_threat,
    is_number,
    is_trustworthy,
    source_notes,
    worst_case,
)


def summary_table(report: Mapping[str, Any]) -> Table:
    """Clean accuracy, robust accuracy per attack and worst case, then every check (green ✓ / red ✗).

    The caption says whether the number is trustworthy; failed checks show their detail.
    """
    name = report.get("run_name") or report.get("objective", "run")
    table = Table(
        title=escape(f"{name} · {format_threat(report.get('threat'))}"),
        title_justify="left",
        title_style="bold",
        caption_style="none",
    )
    table.add_column("", no_wrap=True)
    table.add_column("accuracy", justify="right", no_wrap=True)
    table.add_column("note", overflow="fold")
    table.add_row("clean", format_accuracy(report.get("clean_accuracy")), "")
    notes = source_notes(report)
    for attack, acc in attack_accuracies(report).items():
        note = escape(notes.get(attack, ""))
        table.add_row(escape(f"robust after {attack}"), format_accuracy(acc), f"[dim]{note}[/]")
    table.add_row(
        "[bold]robust: worst case[/]", f"[bold]{format_accuracy(worst_case(report))}[/]", "[dim]per sample[/]"
    )
    balanced = report.get("balanced_accuracy")
    if isinstance(balanced, dict) and "robust" in balanced:
        table.add_row("balanced robust", format_accuracy(balanced["robust"]), "[dim]mean of per-class accuracies[/]")
    long_tail = report.get("long_tail")
    if isinstance(long_tail, dict) and isinstance(long_tail.get("tail"), dict):
        tail_robust = format_accuracy(long_tail["tail"].get("robust"))
        table.add_row("tail robust", tail_robust, "[dim]rarest third of classes[/]")
        if isinstance(long_tail.get("tail80"), dict):
            table.add_row("tail robust (80%)", format_accuracy(long_tail["tail80"].get("robust")),
                          "[dim]rarest 80% of classes (RobustLT)[/]")
        shots = long_tail.get("shots")
        if isinstance(shots, dict) and isinstance(shots.get("few"), dict) and shots["few"].get("classes"):
            few = shots.get("few_below")
            bound = f"< {few:.3g}" if isinstance(few, int | float) else "few"
            table.add_row("few-shot robust", format_accuracy(shots["few"].get("robust")),
                          f"[dim]classes with {escape(bound)} training examples[/]")
    detection = report.get("detection")
    if isinstance(detection, dict):
        table.add_section()
        aurocs = [row.get("auroc") for row in detection.get("attacks") or [] if is_number(row.get("auroc"))]
        auroc = f"; AUROC {min(aurocs):.3f}–{max(aurocs):.3f}" if aurocs else ""
        table.add_row("with detector: non-adaptive",
                      format_accuracy(detection.get("detection_aware_robust_accuracy_non_adaptive")),
                      f"[dim]correct, or attack flagged{auroc}[/]")
        if detection.get("adaptive_tested"):
            table.add_row("[bold]with detector: adaptive[/]",
                          f"[bold]{format_accuracy(detection.get('detection_aware_robust_accuracy'))}[/]",
                          "[dim]worst case over every attack, λ and radius[/]")
        table.add_row("clean inputs flagged", format_accuracy(detection.get("clean_flagged")), "")
    checks = [c for c in report.get("checks", []) if isinstance(c, dict)]
    if checks:
        table.add_section()
        for check in checks:
            passed = check.get("passed")
            mark = "[green]✓[/]" if passed is True else "[red]✗[/]" if passed is False else "[dim]–[/]"
            detail = escape(str(check.get("detail") or "")) if passed is not True else ""
            table.add_row(
                f"{mark} {escape(str(check.get('name', '?')))}", "", f"[red]{detail}[/]" if passed is False else detail
            )
    failed = failed_checks(report)
    if not is_trustworthy(report):
        reason = f"{len(failed)} check(s) failed" if failed else "marked untrustworthy by the evaluation"
        table.caption = f"[bold red]✗ not trustworthy: {reason}[/]"
    elif not checks:
        table.caption = "[yellow]! no checks were run[/]"
    else:
        table.caption = "[bold green]✓ all checks passed[/]"
    table.caption_justify = "left"
    return table


def comparison_table(group: ThreatGroup) -> Table:
    """The runs of one threat group side by side, one column per run (the summary table's rows, transposed).

    Rows: objective, clean, robust after each attack of the group ("—" where a run lacks it), the worst case,
    balanced robust, trustworthy (✗ with the failed checks in red) and the three weakest classes. The title is the
    group's threat model; the best trustworthy worst case of the group is bold and starred (a group of one run
    has no best).
    """
    table = Table(title=escape(group.heading), title_justify="left", title_style="bold", caption_style="none")
    table.add_column("", no_wrap=True)
    for run in group.runs:
        table.add_column(escape(run.label) + (" ★" if run.best else ""), justify="right", overflow="fold")
    table.add_row("objective", *(escape(str(run.report.get("objective"))) for run in group.runs))
    table.add_row("clean", *(format_accuracy(run.report.get("clean_accuracy")) for run in group.runs))
    for attack in group.attacks:
        table.add_row(
            escape(f"robust after {attack}"), *(format_accuracy(run.attacks.get(attack)) for run in group.runs)
        )
    table.add_row(
        "[bold]robust: worst case[/]",
        *(f"[bold]{format_accuracy(run.worst)}{' ★' if run.best else ''}[/]" for run in group.runs),
    )
    table.add_row("balanced robust", *(format_accuracy(run.balanced_robust) for run in group.runs))
    table.add_row(
        "trustworthy",
        *(
            "[green]✓[/]" if run.trustworthy else f"[red]✗ {escape(', '.join(run.failed) or 'marked untrustworthy')}[/]"
            for run in group.runs
        ),
    )
    if group.classes:
        table.add_row(
            "weakest classes",
            *(
                escape("\n".join(f"{name} {format_accuracy(acc)}" for name, acc in group.lowest_classes(run, 3))) or "—"
                for run in group.runs
            ),
        )
    if len(group.runs) > 1:
        table.caption = "[dim]★ best worst case among the trustworthy runs under this threat model[/]"
        table.caption_justify = "left"
    return table
