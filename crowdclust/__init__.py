"""crowdclust: cluster images with a crowd (Prefect pipeline, numba core, Toloka emulator)."""

__version__ = "0.1.0"
