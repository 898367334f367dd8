"""The orchestration runtime under the stages: artifact store, per-key locks, refs, lineage, MLflow tracking,
the stage runner and the Prefect cache policy.

Stage modules (``tasks/<stage>.py``) and the CLI use it through these modules; none of them imports prefect
or mlflow at import time (the Prefect task factory and the MLflow client are imported where they are used).
"""
