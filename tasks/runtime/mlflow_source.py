"""The MLflow dataset source that names a ddflow artifact folder (used by stage runs' ``log_input``)."""

from __future__ import annotations

from typing import Any


def artifact_source(uri: str) -> Any:
    """An MLflow ``DatasetSource`` naming a ddflow artifact folder (any fsspec URL)."""
    from mlflow.data import dataset_source_registry as registry

    cls = _source_class()
    if cls not in registry.get_registered_sources():
        registry.register_dataset_source(cls)
    return cls(uri)


_SOURCE_CLASS: Any = None


def _source_class() -> Any:
    global _SOURCE_CLASS
    if _SOURCE_CLASS is None:
        from mlflow.data.dataset_source import DatasetSource

        class DDFlowArtifactSource(DatasetSource):
            """A ddflow artifact folder; ``load()`` returns its URI (read it with ddflow)."""

            def __init__(self, uri: str) -> None:
                self.uri = uri

            @staticmethod
            def _get_source_type() -> str:
                return "ddflow_artifact"

            def load(self) -> str:
                return self.uri

            @staticmethod
            def _can_resolve(raw_source: Any) -> bool:
                return False  # never claimed implicitly; we construct it explicitly

            @classmethod
            def _resolve(cls, raw_source: Any) -> DDFlowArtifactSource:
                return cls(str(raw_source))

            def to_dict(self) -> dict[str, Any]:
                return {"uri": self.uri}

            @classmethod
            def from_dict(cls, source_dict: dict[Any, Any]) -> DDFlowArtifactSource:
                return cls(str(source_dict["uri"]))

        _SOURCE_CLASS = DDFlowArtifactSource
    return _SOURCE_CLASS
