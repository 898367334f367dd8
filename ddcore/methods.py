"""Interim method table (replaced by the typed registry)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    stage: str = "distill"
    needs: frozenset[str] = frozenset()
    class_groups: bool = False


_M = {n: Method(n, class_groups=True) for n in ("dm", "hdd", "ncfm")}
_M.update({n: Method(n) for n in ("random", "herding")})
_M.update({n: Method(n, needs=frozenset({"latents", "vae"})) for n in ("ddoq", "d4m")})


def get_method(name: str) -> Method:
    return _M[name]
