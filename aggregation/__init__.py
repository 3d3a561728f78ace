"""crowdclust's aggregation core: Toloka export -> pairwise labels -> crowd-clustering model -> clusters.

Public API (the pipeline and the CLI use only these names):

- `read_export(source, strict=True) -> ExportReading` and `ExportFormatError`
- `CrowdClustering` (the Gomes et al. model) and `CoAssociationClustering` (the baseline)
- `clustering_scores(predicted, truth)`
- `generate_crowd(...) -> SyntheticCrowd` (a seeded synthetic crowd for tests and benchmarks)

Never imports prefect, toloka, flows, tasks or emulator.
"""

from aggregation.adapter import ExportFormatError, ExportReading, read_export
from aggregation.estimators import CoAssociationClustering, CrowdClustering
from aggregation.metrics import clustering_scores
from aggregation.pairs import PairLabels, build_pairs
from aggregation.synthetic import SyntheticCrowd, generate_crowd

__all__ = [
    "CoAssociationClustering",
    "CrowdClustering",
    "ExportFormatError",
    "ExportReading",
    "PairLabels",
    "SyntheticCrowd",
    "build_pairs",
    "clustering_scores",
    "generate_crowd",
    "read_export",
]
