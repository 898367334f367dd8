"""A sequential tar reader that reports where each member's bytes sit, and image sizes from their headers.

Indexing existing WebDataset shards in place needs, per member, its name, the offset of its data in the file and
its bytes (to hash them), at tens of thousands of members per second. :mod:`tarfile` builds a ``TarInfo`` object
per member; :func:`scan_tar` parses the 512-byte headers itself (ustar, pax and GNU long names, which is what
``tar``, Python's :mod:`tarfile` and webdataset's ``TarWriter`` write) and hashes the whole file on the way.
Links, devices and other special members are refused: a shard holds regular files only.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ddcore.errors import DataError

BLOCK = 512
_ZERO = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
"""webdataset's grouping rule: a member ``dir/key.field.ext`` belongs to sample ``dir/key``, field ``field.ext``."""


@dataclass
class Member:
    """A regular file in a tar: its name, the offset of its data in the file, and its bytes."""

    name: str
    offset: int
    data: bytes


class HashingReader:
    """Reads a binary file object sequentially in large chunks, sha256-hashing (and, with ``sink``, copying) every
    chunk once; :meth:`read` hands out slices, so a member costs no system call of its own.

    Attributes:
        sha: the running sha256 of every byte read from the file.
    """

    def __init__(self, f: BinaryIO, *, sink: BinaryIO | None = None, chunk: int = 1 << 23) -> None:
        self.f, self.sink, self.chunk = f, sink, chunk
        self.sha = hashlib.sha256()
        self._buf, self._i, self._base = b"", 0, 0  # _base: the file offset of _buf[0]

    @property
    def pos(self) -> int:
        """Bytes handed out so far (the offset of the next byte in the file)."""
        return self._base + self._i

    def _more(self, n: int) -> bool:
        data = self.f.read(max(self.chunk, n))
        if not data:
            return False
        self.sha.update(data)
        if self.sink is not None:
            self.sink.write(data)
        self._base += self._i
        self._buf, self._i = self._buf[self._i :] + data, 0
        return True

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end of the file)."""
        i = self._i
        if i + n > len(self._buf):
            while len(self._buf) - self._i < n and self._more(n):
                pass
            i = self._i
        out = self._buf[i : i + n]
        self._i = i + len(out)
        return out

    def drain(self) -> None:
        """Read (and hash) the rest of the file."""
        self._base += len(self._buf)
        self._buf, self._i = b"", 0
        while self._more(0):
            self._base += len(self._buf)
            self._buf = b""


def _octal(field: bytes, what: str, where: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise DataError(f"{where} is not a tar file (bad {what} field in a header); re-create the shard") from None


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header, if any."""
    pos, path = 0, None
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        length = int(data[pos:sp])
        key, _, value = data[sp + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8")
        pos += length
    return path


def scan_tar(reader: HashingReader, where: str) -> Iterator[Member]:
    """Yield the regular members of the tar read by ``reader``, in file order; ``where`` names it in errors.

    After the last member the rest of the file is read, so ``reader.sha`` is the whole file's sha256.

    Raises:
        DataError: a corrupt or truncated tar, or a member that is not a regular file (link, device, fifo).
    """
    long_name: str | None = None
    while True:
        hdr = reader.read(BLOCK)
        if len(hdr) < BLOCK:
            if not hdr and reader.pos == 0:
                raise DataError(f"{where} is empty; re-create the shard")
            raise DataError(f"{where} is truncated (ends inside a header); re-create or re-download it")
        if hdr == _ZERO:
            reader.drain()
            return
        stored = _octal(hdr[148:156], "checksum", where)
        if stored != sum(hdr) - sum(hdr[148:156]) + 256:  # the checksum field counts as 8 spaces
            raise DataError(f"{where} is corrupt (header checksum mismatch at byte {reader.pos - BLOCK}); "
                            "re-create or re-download it")
        size = _octal(hdr[124:136], "size", where)
        kind = hdr[156:157]
        offset = reader.pos
        body = reader.read(size + (-size % BLOCK))  # the data and its padding to the next block
        if len(body) < size:
            raise DataError(f"{where} is truncated (member data cut short); re-create or re-download it")
        data = body[:size] if len(body) != size else body
        if kind in (b"x", b"L"):
            long_name = _pax_path(data) if kind == b"x" else data.split(b"\0", 1)[0].decode("utf-8")
            continue
        if kind == b"g" or kind == b"5":  # global pax header, directory
            long_name = None
            continue
        name = long_name
        if name is None:
            name = hdr[:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = hdr[345:500].split(b"\0", 1)[0] if hdr[257:262] == b"ustar" else b""
            if prefix:
                name = f"{prefix.decode('utf-8')}/{name}"
        long_name = None
        if kind not in _REGULAR:
            what = kind.decode(errors="replace")
            raise DataError(f"{where}: member {name!r} is a link or special file (type {what}); shards may hold "
                            "regular files only")
        yield Member(name, offset, data)


def split_member(name: str) -> tuple[str, str] | None:
    """``(sample key, field)`` of a member name by webdataset's rule, or ``None`` when it has no extension."""
    m = _MEMBER_RE.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` read from a PNG or JPEG header without decoding; ``None`` for other formats or a header
    this parser does not follow (the caller then decodes)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    if data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in _SOF:
            if pos + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return h, w
        pos += 2 + length
    return None
