"""crowdclust's aggregation core: Toloka export -> pairwise labels -> crowd-clustering model -> clusters.

Public API (the pipeline and the CLI use only these names):

- `read_export(source, strict=True) -> ExportReading` and `ExportFormatError`; `load_export(path)`,
  the export file as a frame of its cells' text (what `read_export` reads a path with)
- `CrowdClustering` (the Gomes et al. model) and `CoAssociationClustering` (the baseline); both
  have `labels_` and `confidence_` (each item's probability of its cluster under the model, with
  the answers resampled, `aggregation.confidence`, and the rest of its linked piece moved as a block,
  `aggregation.pieces`)
- `least_certain(clusters, confidence, per_cluster=5)`: the items to send back to the crowd
- `single_item_clusters(clusters)`: how many clusters hold one item (images no cluster fits);
  `cluster_confidence(clusters, confidence)`: each cluster's mean confidence;
  `doubtful_clusters(clusters, confidence)`: how many larger ones have a mean confidence below 0.5
- `clustering_scores(predicted, truth)`, `confidence_scores(predicted, confidence, truth)`
- `find_dissent(model, labels) -> Dissent | None`: a camp of workers who
  agree with one another on another grouping (colour instead of style, say), and that grouping
- `find_recheck(model, labels) -> Recheck`: the images only the prior placed, to show the crowd again
  among themselves (`aggregation.recheck`)
- `worker_quality(pairs, clusters)`: each worker's two coins and informedness against the clusters,
  the spammers to block (`aggregation.workers`)
- `generate_crowd(...) -> SyntheticCrowd` and `crowd_shape(name, seed)` (seeded synthetic crowds
  of the shapes in `SHAPES`, for tests and benchmarks); `followup_crowd(crowd, items, seed)`, a
  later round over some of a crowd's images
- `design_information(...)` / `design_for(...)`: how many images of its own style a HIT design
  shows each image, and the overlap a catalogue needs (`aggregation.design`, pure Python)

Never imports prefect, toloka, flows, tasks or emulator. The names are loaded on first use
(PEP 562), so `import aggregation.design` or `aggregation.startup` costs neither pandas nor numba.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregation.adapter import ExportFormatError, ExportReading, load_export, read_export
    from aggregation.design import DesignInformation, design_for, design_information
    from aggregation.dissent import Dissent, find_dissent
    from aggregation.estimators import (
        CoAssociationClustering,
        CrowdClustering,
        cluster_confidence,
        doubtful_clusters,
        least_certain,
        single_item_clusters,
    )
    from aggregation.metrics import clustering_scores, confidence_scores
    from aggregation.pairs import PairLabels, build_pairs
    from aggregation.recheck import Recheck, find_recheck
    from aggregation.synthetic import SHAPES, SyntheticCrowd, crowd_shape, followup_crowd, generate_crowd
    from aggregation.workers import worker_quality

# The seeds the estimators take: their kernels draw from an unsigned 64-bit seed (a larger one fails
# inside numba) and numpy's generators take no negative one. A constant here, so that the CLI and the
# pipeline's config check refuse the same range without loading the model.
MAX_SEED = 2**64 - 1

_HOME = {
    "ExportFormatError": "adapter",
    "ExportReading": "adapter",
    "read_export": "adapter",
    "load_export": "adapter",
    "DesignInformation": "design",
    "design_for": "design",
    "design_information": "design",
    "Dissent": "dissent",
    "find_dissent": "dissent",
    "Recheck": "recheck",
    "find_recheck": "recheck",
    "CoAssociationClustering": "estimators",
    "CrowdClustering": "estimators",
    "least_certain": "estimators",
    "single_item_clusters": "estimators",
    "doubtful_clusters": "estimators",
    "cluster_confidence": "estimators",
    "clustering_scores": "metrics",
    "confidence_scores": "metrics",
    "PairLabels": "pairs",
    "build_pairs": "pairs",
    "SHAPES": "synthetic",
    "SyntheticCrowd": "synthetic",
    "crowd_shape": "synthetic",
    "followup_crowd": "synthetic",
    "generate_crowd": "synthetic",
    "worker_quality": "workers",
}

__all__ = [
    "MAX_SEED",
    "SHAPES",
    "CoAssociationClustering",
    "CrowdClustering",
    "DesignInformation",
    "Dissent",
    "ExportFormatError",
    "ExportReading",
    "PairLabels",
    "Recheck",
    "SyntheticCrowd",
    "build_pairs",
    "cluster_confidence",
    "clustering_scores",
    "confidence_scores",
    "crowd_shape",
    "design_for",
    "design_information",
    "doubtful_clusters",
    "find_dissent",
    "find_recheck",
    "followup_crowd",
    "generate_crowd",
    "least_certain",
    "load_export",
    "read_export",
    "single_item_clusters",
    "worker_quality",
]


def __getattr__(name: str) -> object:
    """Import the submodule that defines `name` on first use."""
    if name not in _HOME:
        raise AttributeError(f"module 'aggregation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"aggregation.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
