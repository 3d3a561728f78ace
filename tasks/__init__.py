"""The pipeline's stages: plain functions with thin Prefect task wrappers, one module per stage.

Layering (checked by tests/test_architecture.py): `tasks` imports `aggregation` and its own modules,
never `flows`; `params`, `stages` and `settings` are at the bottom and import nothing of the project.
"""
