"""The point-cloud run task (``task: points``): the classification pipeline with point-cloud defaults.

A point-cloud config is a classifier config (``sparring.config.RunConfig``) whose defaults fit point clouds: the
procedural ``shapes`` data, PointNet, and an evaluation threat on coordinates without a [0, 1] box. Its report is
a classifier report (ε-curve, per class, checks) whose examples are drawn as clouds. A config without ``task`` that
names point-cloud data runs the same way (the classification task does not care what the tensors hold).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sparring.classification import ClassificationTask
from sparring.config import DataSpec, EvalSpec, ModelSpec, RunConfig, ThreatSpec
from sparring.report.views import CLASSIFICATION, VIEWS
from sparring.tasks import TASKS


def _point_threat() -> ThreatSpec:
    """L∞ 0.02 on the coordinates of unit-sphere clouds, without a box (coordinates have no [0, 1] range)."""
    return ThreatSpec(norm="linf", eps=0.02, bounds=None)


class PointsRunConfig(RunConfig):
    """A point-cloud classifier run; every section as in :class:`~sparring.config.RunConfig`, other defaults."""

    task: Literal["points"] = "points"  # type: ignore[assignment]
    data: DataSpec = Field(default_factory=lambda: DataSpec(source="shapes"))
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name="pointnet"))
    eval: EvalSpec = Field(default_factory=lambda: EvalSpec(threat=_point_threat()))

    @model_validator(mode="after")
    def _point_defaults_within_sections(self) -> PointsRunConfig:
        """A section that is written but leaves a key out gets the point-cloud default, not the image one."""
        if "source" not in self.data.model_fields_set:
            self.data.source = "shapes"
        if "name" not in self.model.model_fields_set:
            self.model.name = "pointnet"
        if self.eval.threat is None:
            self.eval.threat = _point_threat()
        return self


@TASKS.register("points")
class PointsTask(ClassificationTask):
    name = "points"
    config_type = PointsRunConfig
    view = "points"


VIEWS.register("points")(CLASSIFICATION)  # a classifier report; the page draws its examples as clouds

__all__ = ["PointsRunConfig", "PointsTask"]
