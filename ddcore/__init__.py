"""ddcore: the pure dataset-distillation library behind ddflow.

Never imports prefect or mlflow; every function here is callable and testable on its own.
"""

__version__ = "0.1.0"

import warnings

# geoopt calls torch.jit.script at import, and torch warns that it is deprecated: every command, Ray worker and
# notebook importing ddcore printed it. Only that warning is silenced.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
