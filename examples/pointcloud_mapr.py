"""Train PointNet with MAPR on the procedural shapes, then attack it adaptively, non-adaptively and by dropping points.

    python examples/pointcloud_mapr.py            # ~5 minutes on 2 CPU cores

The intrinsic features (curvature, graph diffusion) are computed inside the model, so the PGD below
differentiates through them: that is the adaptive attack. Inside ``features_detached`` the features are
constants to the attacker: the number a gradient-masked evaluation would report. The gap between the two is
what ``methods.md`` §6.3 warns about.
"""

from __future__ import annotations

import torch

from sparring.attacks import APGD
from sparring.models import build_model
from sparring.objectives import build
from sparring.points import PointSet, features_detached, load_shapes
from sparring.points.attacks import PointDrop
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer


def robust_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack, threat) -> float:
    result = attack(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    return float(result.robust.float().mean())  # attack success includes clean mistakes


def main() -> None:
    torch.manual_seed(0)
    train, test = load_shapes(seed=0, num_points=128)
    model = build_model("pointnet", input_shape=train.input_shape, num_classes=train.num_classes, width=32,
                        intrinsic=True)
    config = TrainConfig(epochs=10, batch_size=32, optimizer="adam", lr=1e-3, weight_decay=0.0, val_size=64,
                         val_attack_steps=2)
    trainer = Trainer(model=model, objective=build("mapr", mu=1.0), train=(train.x, train.y),
                      val=(test.x, test.y), config=config, num_classes=train.num_classes)
    trainer.fit()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()

    pick = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(0))[:100]
    x, y = test.x[pick], test.y[pick]
    with torch.no_grad():
        print(f"clean accuracy           {(model(x).argmax(1) == y).float().mean():.3f}")
    pgd = APGD(loss="ce", steps=20)
    for eps in (0.02, 0.05):
        threat = LinfBall(eps=eps, bounds=None)  # coordinates have no box
        adaptive = robust_accuracy(model, x, y, pgd, threat)
        with features_detached(model):
            masked = robust_accuracy(model, x, y, pgd, threat)
        print(f"APGD eps {eps:<4}            adaptive {adaptive:.3f}   non-adaptive {masked:.3f}")
    drop = round(0.2 * x.shape[1])
    print(f"saliency drop of {drop} points  {robust_accuracy(model, x, y, PointDrop(), PointSet(eps=drop)):.3f}")


if __name__ == "__main__":
    main()
