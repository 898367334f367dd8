"""ddcore: the pure dataset-distillation library behind ddflow.

Never imports prefect or mlflow; every function here is callable and testable on its own.
"""

__version__ = "0.1.0"
