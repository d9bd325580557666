"""Point-cloud attacks, registered in :data:`sparring.attacks.ATTACKS` on import.

``point_drop`` (saliency point dropping) and ``point_add`` (adding points) need a
:class:`~sparring.points.threat.PointSet` threat; ``knn`` (the kNN attack) moves coordinates in a norm ball.
"""

from sparring.points.attacks.add import PointAdd
from sparring.points.attacks.drop import PointDrop
from sparring.points.attacks.knn import KNNAttack, knn_penalty

__all__ = ["KNNAttack", "PointAdd", "PointDrop", "knn_penalty"]
