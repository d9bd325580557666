"""Recommender runs from YAML (``task: recsys``): config validation, the run folder, the report, the CLI dispatch.

One tiny run (60 users, 40 items, 2 epochs, 10 targets) is made once per module and inspected by several tests;
the CLI cases call ``sparring.cli.main`` in process with argv patched (as tests/test_cli.py does for bad input).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_cli import one_error_line, run_main  # the in-process CLI runner of the image path's tests

from sparring.config import load_any_config, load_config, parse_config
from sparring.errors import ConfigError
from sparring.recsys.report import load_recsys_report, promotion_figure, render_recsys_report
from sparring.recsys.task import RecRunConfig, parse_rec_config, run_recsys

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "configs" / "recsys_uat_mc.yaml"

TINY: dict[str, Any] = {
    "task": "recsys",
    "name": "tiny_rec",
    "seed": 3,
    "data": {"source": "synthetic", "n_users": 60, "n_items": 40, "dim": 8, "interactions_per_user": 8},
    "model": {"name": "vbpr", "dim": 8, "visual_hidden": [16], "text_hidden": [16]},
    "objective": {"name": "uat_mc", "eps": 0.05, "adv_weight": 5.0, "gamma": 4.0},
    "train": {"epochs": 2, "batch_size": 128},
    "eval": {"ks": [5, 10], "promotion": {"methods": ["fgsm", "pgd"], "eps": [0.05, 0.1], "targets": 10,
                                          "kinds": ["random"], "k": 10, "ks": [5, 10, 20]}},
}


def tiny(**changes: Any) -> dict[str, Any]:
    """TINY with sections changed: ``data`` / ``train`` / ``promotion`` are merged into, other keys replaced."""
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        if key in ("data", "train"):
            raw[key].update(value)
        elif key == "promotion":
            raw["eval"]["promotion"].update(value)
        else:
            raw[key] = value
    return raw


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("recsys") / "run"
        report = run_recsys(parse_rec_config(tiny()), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert report is not None
    return out, report


# --------------------------------------------------------------------------- the run folder and report.json
def test_run_folder_has_every_file(run):
    out, _ = run
    for name in ("config.yaml", "metrics.jsonl", "report.json", "report.html", "checkpoints/model.safetensors",
                 "checkpoints/model.json"):
        assert (out / name).is_file(), name
    model = json.loads((out / "checkpoints" / "model.json").read_text())
    assert model["task"] == "recsys" and model["name"] == "vbpr" and (model["n_users"], model["n_items"]) == (60, 40)


def test_metrics_jsonl_has_one_line_per_epoch_with_the_cosines(run):
    out, _ = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # the core Trainer's lines: 0-based epochs, train_* metrics
    for row in rows:
        for key in ("train_loss", "train_objective_loss", "train_regularizer", "train_grad_cosine",
                    "train_delta_cosine", "train_adv_bpr", "time_s"):
            assert np.isfinite(row[key]), key


def test_report_json_fields(run):
    out, report = run
    on_disk = load_recsys_report(out)
    assert on_disk["task"] == "recsys" and on_disk["run_name"] == "tiny_rec"
    assert on_disk["data"]["users"] == 60 and on_disk["data"]["items"] == 40
    assert on_disk["model"]["name"] == "vbpr" and on_disk["model"]["parameters"] > 0
    assert on_disk["objective"]["name"] == "uat_mc" and on_disk["objective"]["gamma"] == 4.0
    for k in (5, 10):
        for name in ("recall", "ndcg", "precision", "map"):
            assert 0.0 <= on_disk["ranking"][f"{name}@{k}"] <= 1.0
    rows = on_disk["promotion"]
    assert [(r["kind"], r["method"], r["eps"]) for r in rows] == [
        ("random", m, e) for m in ("fgsm", "pgd") for e in (0.05, 0.1)
    ]
    for row in rows:
        assert row["k"] == 10 and row["targets"] == 10 and row["anchors"] == 24  # 40% of 60 users
        assert set(row["hr_after"]) == {"5", "10", "20"}
        assert row["hr_before"] == rows[0]["hr_before"]  # the same targets and anchors for every attack
    training = on_disk["training"]
    assert training["epochs"] == 2 and len(training["grad_cosine"]) == 2 and np.isfinite(training["final_loss"])
    assert training["lr"] == 1e-3  # the model's default, resolved
    assert set(on_disk["timing"]) >= {"train_s", "ranking_s", "promotion_s", "total_s"}
    assert json.loads(json.dumps(report)) == on_disk


def test_html_has_the_plot_and_both_tables(run):
    out, _ = run
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # HR@K before / after, training curves
    assert 'id="ranking"' in html and 'id="promotion"' in html and "HR@k after" in html and "ndcg@K" in html
    assert "http://" not in html and "https://" not in html


def test_resolved_config_reproduces_the_config(run, tmp_path):
    out, _ = run
    config = load_any_config(out / "config.yaml")
    assert isinstance(config, RecRunConfig)
    assert config.train.lr == 1e-3 and config.objective["name"] == "uat_mc" and config.eval.promotion.k == 10


def weights(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "model.safetensors"))


def weights_of_bytes(data: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    return load(data)


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["train_loss"]) for r in rows]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, single_thread):
    """A run killed after its 2nd epoch's checkpoint, then run again with resume, ends with the uninterrupted run's
    weights and per-epoch losses (the core Trainer's checkpoints; each epoch's negatives depend on (seed, epoch))."""
    from sparring.runtime.checkpoint import CheckpointDir

    config = parse_rec_config(tiny(train={"epochs": 4}, eval={"ks": [5, 10], "promotion": None}))
    whole = run_recsys(config, tmp_path / "whole", progress=False)
    assert whole is not None and whole["training"]["epochs"] == 4 and whole["threat"] is None

    save = CheckpointDir.save

    def save_then_die(self, **kwargs):
        path = save(self, **kwargs)
        if kwargs["epoch"] == 1:
            raise KeyboardInterrupt  # killed once the checkpoint of epoch 1 (the 2nd) is complete
        return path

    monkeypatch.setattr(CheckpointDir, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_recsys(config, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    assert [epoch for epoch, _ in losses(tmp_path / "killed")] == [0, 1]
    assert not (tmp_path / "killed" / "report.json").exists()

    resumed = run_recsys(config, tmp_path / "killed", resume=True, progress=False)
    assert resumed is not None and resumed["training"]["epochs"] == 4
    assert losses(tmp_path / "killed") == losses(tmp_path / "whole")
    assert [epoch for epoch, _ in losses(tmp_path / "whole")] == [0, 1, 2, 3]
    assert same_weights(weights(tmp_path / "whole"), weights(tmp_path / "killed"))
    assert resumed["training"]["loss"] == whole["training"]["loss"]
    assert resumed["ranking"] == whole["ranking"]


def test_threat_and_view_are_registered(run):
    from sparring.report.views import VIEWS, view_of
    from sparring.tasks import TASKS

    out, report = run
    assert report["threat"] == {"kind": "promotion", "eps": [0.05, 0.1], "methods": ["fgsm", "pgd"]}
    assert TASKS.get("recsys").config_type is RecRunConfig
    assert view_of(out) is VIEWS.get("recsys")
    figures = VIEWS.get("recsys").headline(report)
    assert set(figures) == {"Recall@10", "NDCG@10", "worst post-attack HR@k"}  # ks [5, 10]: the nearest to 20
    assert all(value is None or 0.0 <= value <= 1.0 for value in figures.values())


def test_promotion_figure_draws_one_panel_per_kind():
    row = {"method": "fgsm", "eps": 0.1, "k": 10, "hr_before": {"5": 0.1, "10": 0.2}, "hr_after": {"5": 0.3,
                                                                                                  "10": 0.5}}
    fig = promotion_figure({"promotion": [{**row, "kind": "random"}, {**row, "kind": "cold"}]})
    assert fig is not None and len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    assert promotion_figure({"promotion": []}) is None
    html = render_recsys_report({"task": "recsys", "ranking": {}, "promotion": []})
    assert "No promotion attacks" in html


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(("raw", "field"), [
    (tiny(bogus=1), "bogus: unknown field"),
    (tiny(train={"epochz": 3}), "train.epochz: unknown field"),
    (tiny(train={"epochs": "many"}), "train.epochs"),
    (tiny(promotion={"eps": [0.05, -0.1]}), "eval.promotion.eps"),
    (tiny(promotion={"methods": ["cw"]}), "eval.promotion.methods"),
    (tiny(promotion={"kinds": ["lukewarm"]}), "eval.promotion.kinds"),
    (tiny(promotion={"anchor_fraction": 0}), "eval.promotion.anchor_fraction"),
    (tiny(objective={"name": "pgd_at"}), "objective.name"),
    (tiny(objective={"name": "mapr"}), "objective.name"),
    (tiny(objective={"name": "uat_mc", "eps": -1.0}), "objective"),
    (tiny(objective={"name": "uat_mc", "gama": 1.0}), "objective.gama"),
    (tiny(model={"name": "resnet"}), "model.name"),
    (tiny(model={"name": "vbpr", "hidden": [8]}), "model.hidden"),
    (tiny(model={"name": "mmgcn", "combine": "max"}), "model"),
    (tiny(data={"source": "mmrec"}), "data"),
])
def test_config_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError) as err:
        parse_rec_config(raw, source="cfg.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("cfg.yaml: ") and field in message, message


def test_standard_is_bpr_and_apr_is_accepted():
    assert parse_rec_config(tiny(objective={"name": "standard"})).build_objective().name == "standard"
    assert parse_rec_config(tiny(objective={"name": "apr"})).build_objective().gamma == 0.0


def test_task_dispatch(tmp_path):
    path = tmp_path / "rec.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    assert isinstance(load_any_config(path), RecRunConfig)
    with pytest.raises(ConfigError, match="task"):
        load_config(path)  # the image path's loader points at the dispatching one
    with pytest.raises(ConfigError, match="task"):
        parse_config(tiny())
    path.write_text(yaml.safe_dump({**tiny(), "task": "ranking"}))
    with pytest.raises(ConfigError, match="task: must be one of .*recsys"):
        load_any_config(path)


def test_example_config_parses():
    config = load_any_config(EXAMPLE)
    assert isinstance(config, RecRunConfig)
    assert config.model.name == "vbpr" and config.train.epochs == 20
    assert config.build_objective().describe() == {"name": "uat_mc", "eps": 0.05, "adv_weight": 5.0, "gamma": 4.0,
                                                   "second_order": True, "param_grad_leak": False}
    assert config.eval.promotion is not None
    assert config.eval.promotion.methods == ["fgsm", "pgd"] and config.eval.promotion.eps == [0.025, 0.05, 0.1]


# --------------------------------------------------------------------------- the CLI


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*")
            if p.is_file()}


@pytest.mark.parametrize(("raw", "needle"), [
    (tiny(promotion={"eps": [-0.05]}), "eval.promotion.eps"),
    (tiny(model={"name": "nope"}), "model.name"),
    (tiny(data={"source": "mmrec", "root": "missing_folder"}), "missing_folder"),
    (tiny(data={"source": "mmrec", "root": "."}), "lacks"),
    (tiny(promotion={"k": 40}), "eval.promotion.k"),
])
def test_cli_bad_recsys_config_is_one_line_and_touches_nothing(raw, needle, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("an earlier run\n")
    (tmp_path / "empty.inter").write_text("userID\titemID\tx_label\n")  # an MMRec folder without features
    before = snapshot(tmp_path / "run")
    code, _, err = run_main(["run", "bad.yaml", "--out", "run", "--overwrite", "-q"], tmp_path, monkeypatch, capsys)
    assert code == 2
    assert needle in one_error_line(err)
    assert snapshot(tmp_path / "run") == before


def test_cli_train_then_report(tmp_path, monkeypatch, capsys, single_thread):
    (tmp_path / "rec.yaml").write_text(yaml.safe_dump(tiny(train={"epochs": 1})))
    code, out, err = run_main(["train", "rec.yaml", "--out", "trained", "-q"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "trained" / "checkpoints" / "model.safetensors").is_file()
    assert not (tmp_path / "trained" / "report.json").exists()
    before = (tmp_path / "trained" / "checkpoints" / "model.safetensors").read_bytes()
    # A recommender run trains through the core Trainer, so --resume continues it (here: nothing left to train).
    code, _, err = run_main(["train", "rec.yaml", "--out", "trained", "--resume", "-q"], tmp_path, monkeypatch,
                            capsys)
    assert code == 0, err
    assert same_weights(weights(tmp_path / "trained"), weights_of_bytes(before))


def test_cli_report_rerenders_a_recsys_run(run, tmp_path, monkeypatch, capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(run[0], folder)
    (folder / "report.html").unlink()
    code, out, err = run_main(["report", "copy"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert (folder / "report.html").is_file() and "HR@10" in out and "Recall" in out
