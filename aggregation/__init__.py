"""crowdclust's aggregation core: Toloka export -> pairwise labels -> crowd-clustering model -> clusters.

Public API (the pipeline and the CLI use only these names):

- `read_export(source, strict=True) -> ExportReading` and `ExportFormatError`
- `CrowdClustering` (the Gomes et al. model) and `CoAssociationClustering` (the baseline); both
  have `labels_` and `confidence_` (each item's probability of its cluster under the model)
- `least_certain(clusters, confidence, per_cluster=5)`: the items to send back to the crowd
- `clustering_scores(predicted, truth)`
- `generate_crowd(...) -> SyntheticCrowd` and `crowd_shape(name, seed)` (seeded synthetic crowds
  of the shapes in `SHAPES`, for tests and benchmarks)

Never imports prefect, toloka, flows, tasks or emulator.
"""

from aggregation.adapter import ExportFormatError, ExportReading, read_export
from aggregation.estimators import CoAssociationClustering, CrowdClustering, least_certain
from aggregation.metrics import clustering_scores
from aggregation.pairs import PairLabels, build_pairs
from aggregation.synthetic import SHAPES, SyntheticCrowd, crowd_shape, generate_crowd

__all__ = [
    "SHAPES",
    "CoAssociationClustering",
    "CrowdClustering",
    "ExportFormatError",
    "ExportReading",
    "PairLabels",
    "SyntheticCrowd",
    "build_pairs",
    "clustering_scores",
    "crowd_shape",
    "generate_crowd",
    "least_certain",
    "read_export",
]
