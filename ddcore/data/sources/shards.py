"""Existing WebDataset shards from any URL webdataset understands (local, fsspec, and ``pipe:`` on opt-in).

A ``pipe:`` URL is a shell command webdataset runs to obtain the bytes. A config that others may edit (a
scheduled deployment's) must not be able to run commands, so ``pipe:`` URLs are refused unless the
environment variable ``DDFLOW_ALLOW_PIPE=1`` is set by whoever starts the process.
"""

from __future__ import annotations

import itertools
import os
import tarfile
from collections.abc import Iterator
from typing import Any

import webdataset as wds

from ddcore.data.codec import IMAGE_FIELDS, SAFE_EXTRA, check_member_key, decode_png, parse_label
from ddcore.data.meta import KEY_RE, MAX_CLASSES
from ddcore.data.sources.base import Sample
from ddcore.errors import DataError

ALLOW_PIPE_ENV = "DDFLOW_ALLOW_PIPE"


def check_url_allowed(url: str) -> str:
    """``url`` unchanged, unless it is a ``pipe:`` command and ``DDFLOW_ALLOW_PIPE=1`` is not set.

    Raises:
        DataError: one line naming the URL and the opt-in.
    """
    if str(url).lstrip().lower().startswith("pipe:") and os.environ.get(ALLOW_PIPE_ENV) != "1":
        shown = url if len(url) <= 60 else url[:57] + "..."
        raise DataError(f"shard URL {shown!r} runs a shell command; refused unless you opt in with "
                        f"{ALLOW_PIPE_ENV}=1 in the environment (only for configs you trust)")
    return url


class ShardSource:
    """Samples read from WebDataset tar shards, with explicit decoders only.

    Each sample needs one image field (png/jpg/...) and an integer label (``cls``). Members with
    any other extension (``.pyd``, ``.pickle``, ``.pth``...) make the ingest fail: they are never
    decoded.

    Args:
        urls: ``{split: url-or-brace-pattern}``.
        classes: class names; ``None`` = ``"0".."K-1"`` from the largest label seen.
        name: dataset name.
    """

    def __init__(self, urls: dict[str, str], *, classes: list[str] | None = None, name: str = "webdataset") -> None:
        if not urls:
            raise DataError("webdataset source needs urls: {train: <url>, ...}")
        for url in urls.values():
            check_url_allowed(url)
        self.urls, self.name = dict(urls), name
        url = next(iter(self.urls.values()))
        first = next(self._raw(url), None)
        if first is None:
            raise DataError(f"shard {url} holds no samples; pass shards with at least one image and label")
        img = decode_png(first[_image_field(first)])
        self.image_shape = (img.shape[2], img.shape[0], img.shape[1])
        if classes is None:
            top, key, where = max((_label(s), str(s.get("__key__")), url) for url in self.urls.values()
                                  for s in self._raw(url))
            if top >= MAX_CLASSES:
                raise DataError(f"label {top} of sample {key!r} in {where} is out of range for the dataset's classes "
                                f"(0..largest label, at most {MAX_CLASSES} without a class list); fix the label, or "
                                "list the classes in data.source.classes")
            classes = [str(i) for i in range(top + 1)]
        self.classes = list(classes)

    def _raw(self, url: str) -> Iterator[dict[str, Any]]:
        unsplit: list[str] = []  # members webdataset would drop silently: no '.' to split key from field

        def keep(fname: str) -> bool:
            if "." not in fname.rsplit("/", 1)[-1]:
                unsplit.append(fname)
            return True

        ds = wds.WebDataset(url, shardshuffle=False, empty_check=False, handler=wds.reraise_exception,
                            select_files=keep)
        try:
            for sample in itertools.chain(ds, [None]):
                if unsplit:
                    raise DataError(f"shard member {unsplit[0]!r} in {url} has no extension, so it belongs to no "
                                    "sample; name members <key>.<field> (e.g. 000001.png, 000001.cls) or remove it")
                if sample is None:
                    break
                _check_member_name(sample, url)
                bad = sorted(k for k in sample if not k.startswith("__") and k.lower() not in SAFE_EXTRA)
                if bad:
                    raise DataError(
                        f"refused shard member '{sample.get('__key__')}.{bad[0]}' in {url}: "
                        f"only {sorted(SAFE_EXTRA)} are read (pickle-like members are never decoded)"
                    )
                yield sample
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise DataError(f"shard {url} is corrupt or truncated ({exc}); re-create or re-download it") from None

    def describe(self) -> dict[str, Any]:
        return {"kind": "webdataset", "uri": self.urls}

    def expected_total(self) -> int | None:
        return None

    def samples(self) -> Iterator[Sample]:
        c = self.image_shape[0]
        for split, url in self.urls.items():
            for i, s in enumerate(self._raw(url)):
                src_key = str(s.get("__key__", ""))
                key = src_key if KEY_RE.match(src_key) else f"{split}_{i:08d}"
                yield Sample(split, key, decode_png(s[_image_field(s)], channels=c), _label(s), {"source_key": src_key})


def _check_member_name(sample: dict[str, Any], url: str) -> None:
    """:func:`~ddcore.data.codec.check_member_key` of a decoded webdataset sample (member: key and first field)."""
    key = str(sample.get("__key__", ""))
    field = next((k for k in sample if not k.startswith("__")), "")
    check_member_key(key, f"{key}.{field}" if field else key, url)


def _image_field(sample: dict[str, Any]) -> str:
    for f in IMAGE_FIELDS:
        if f in sample:
            return f
    raise DataError(f"sample {sample.get('__key__')!r} has no image field (one of {IMAGE_FIELDS})")


def _label(sample: dict[str, Any]) -> int:
    return parse_label(sample, f"sample {sample.get('__key__')!r}")
