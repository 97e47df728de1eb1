"""A bounded reader of raw tar header blocks, run over a bundle before Python's tarfile is allowed to parse it.

tarfile reads every pax and GNU long-name header whole into memory, follows chains of them by recursion, and
does so for the first member already while opening the archive; a 200 KB gzip archive holding one 200 MB pax
header takes it to over 700 MB. The bundle reader therefore reads the signed manifest at the head of the
archive with this reader, checks its signature, and walks the remaining headers with it, refusing any extended
header over `MAX_EXTENDED_HEADER_BYTES`, before tarfile sees anything. The walk follows tarfile's own rules for
where a member's data ends, and refuses what could make the two disagree (a pax `size`, sparse members), so
tarfile afterwards meets only headers this reader has bounded."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "BLOCK_BYTES",
    "MAX_EXTENDED_HEADER_BYTES",
    "RawMember",
    "RawTarReader",
    "TarScanError",
]

BLOCK_BYTES = 512
# Bundle paths are short; a pax or GNU long-name header is a few hundred bytes at most.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
# A member may be preceded by a global and a per-file pax header, or a GNU long name and long link name.
MAX_EXTENDED_CHAIN = 4
EXTENDED_TYPES = frozenset({b"x", b"g", b"X", b"L", b"K"})
_PAX_TYPES = frozenset({b"x", b"g", b"X"})
# tarfile skips data blocks only after these and after types it does not know (see TarInfo._proc_builtin).
_REGULAR_TYPES = frozenset({b"0", b"\x00", b"7"})
_KNOWN_TYPES = _REGULAR_TYPES | frozenset({b"1", b"2", b"3", b"4", b"5", b"6", b"S"}) | EXTENDED_TYPES
_SPARSE_TYPE = b"S"
_POSIX_MAGIC = b"ustar\x0000"
# pax keys that move where the next header starts; a bundle never needs them (members stay below 8 GiB).
_LAYOUT_PAX_KEYS = (b"size", b"GNU.sparse.")
_SKIP_CHUNK = 1 << 20


class TarScanError(ValueError):
    """The archive's raw headers are malformed or unbounded; `too_large` tells a size limit from a format error."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class RawMember:
    """A member as its own ustar header block describes it; `extended` when pax or GNU headers preceded it."""

    name: str
    type: bytes
    size: int
    offset: int
    extended: bool

    @property
    def is_regular(self) -> bool:
        # A v7 regular file whose name ends in "/" is a folder (tarfile reads it so too).
        return self.type in _REGULAR_TYPES and not (self.type == b"\x00" and self.name.endswith("/"))


class RawTarReader:
    """Walks an uncompressed tar stream header by header, holding at most one extended header in memory."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._offset = 0  # of the next unread byte
        self._pending = 0  # data bytes (with padding) of the current member not read yet

    def next_member(self, *, plain: bool = False) -> RawMember | None:
        """The next file, folder or other member; None at the end of the archive. With `plain`, a member must
        have no extended header, which is then refused before its data is read."""
        self._skip(self._pending)
        self._pending = 0
        extended = 0
        while True:
            offset = self._offset
            block = self._read_exactly(BLOCK_BYTES, allow_empty=True)
            if block is None or block.count(0) == BLOCK_BYTES:
                if extended:
                    raise TarScanError(f"the archive ends after an extended header at byte {offset}")
                return None
            kind, name, size = _parse_header(block, offset)
            if kind in EXTENDED_TYPES:
                if plain:
                    raise TarScanError(f"an extended header (type {kind.decode('latin-1')!r}) at byte {offset}")
                extended += 1
                self._check_extended(kind, size, extended, offset)
                data = self._read_exactly(_padded(size))
                if kind in _PAX_TYPES:
                    _check_pax_records(data[:size], offset)
                continue
            if kind == _SPARSE_TYPE:
                raise TarScanError(f"member {name!r} at byte {offset} is a sparse file; bundles hold plain files")
            member = RawMember(name=name, type=kind, size=size, offset=offset, extended=extended > 0)
            self._pending = _data_blocks(member)
            return member

    def read_data(self, member: RawMember, limit: int) -> bytes:
        """The data of the member just returned, which must be a regular file no larger than `limit`."""
        if member.size > limit:
            raise TarScanError(f"member {member.name!r} is {member.size} bytes, over the {limit} limit", too_large=True)
        data = self._read_exactly(self._pending)
        self._pending = 0
        return data[: member.size]

    def _check_extended(self, kind: bytes, size: int, chain: int, offset: int) -> None:
        if size > MAX_EXTENDED_HEADER_BYTES:
            raise TarScanError(
                f"extended header (type {kind.decode('latin-1')!r}) at byte {offset} is {size} bytes, "
                f"over the {MAX_EXTENDED_HEADER_BYTES} limit",
                too_large=True,
            )
        if chain > MAX_EXTENDED_CHAIN:
            raise TarScanError(f"more than {MAX_EXTENDED_CHAIN} extended headers in a row at byte {offset}")

    def _read_exactly(self, count: int, *, allow_empty: bool = False) -> bytes | None:
        data = self._stream.read(count)
        self._offset += len(data)
        if allow_empty and not data:
            return None
        if len(data) != count:
            raise TarScanError(f"the archive is truncated at byte {self._offset}")
        return data

    def _skip(self, count: int) -> None:
        # Read rather than seek: a gzip stream seeks by reading anyway, and a read notices a truncated file.
        while count > 0:
            data = self._stream.read(min(count, _SKIP_CHUNK))
            if not data:
                raise TarScanError(f"the archive is truncated at byte {self._offset}")
            count -= len(data)
            self._offset += len(data)


def _parse_header(block: bytes, offset: int) -> tuple[bytes, str, int]:
    """Type, name and size of a header block, checked the way tarfile checks it."""
    stored = _number(block[148:156], "checksum", offset)
    if stored not in _checksums(block):
        raise TarScanError(f"the tar header at byte {offset} has a bad checksum; the archive is not a valid tar")
    kind = block[156:157]
    size = _number(block[124:136], "size", offset)
    if size < 0:
        raise TarScanError(f"the tar header at byte {offset} declares a negative size")
    name = _text(block[0:100])
    if block[257:265] == _POSIX_MAGIC and kind not in (b"L", b"K", b"S"):
        prefix = _text(block[345:500])
        name = f"{prefix}/{name}" if prefix else name
    return kind, name, size


def _data_blocks(member: RawMember) -> int:
    """Bytes of data blocks after a member's header, as tarfile counts them: other types' sizes it ignores."""
    if member.type in _REGULAR_TYPES or member.type not in _KNOWN_TYPES:
        return _padded(member.size)
    if member.size:
        # tarfile would read this member's data as the next header; refuse rather than disagree with it.
        raise TarScanError(f"member {member.name!r} of type {member.type!r} declares {member.size} data bytes")
    return 0


def _check_pax_records(data: bytes, offset: int) -> None:
    """Refuse pax records that change where data ends; they would make this walk and tarfile's differ."""
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0 or not data[position:space].isdigit():
            raise TarScanError(f"the pax header at byte {offset} is malformed")
        length = int(data[position:space])
        record = data[space + 1 : position + length]
        if length <= space - position or b"=" not in record or not record.endswith(b"\n"):
            raise TarScanError(f"the pax header at byte {offset} is malformed")
        key = record.split(b"=", 1)[0]
        if key == b"size" or key.startswith(_LAYOUT_PAX_KEYS[1]):
            raise TarScanError(
                f"the pax header at byte {offset} sets {key.decode('latin-1')!r}, not allowed in a bundle"
            )
        position += length


def _number(field: bytes, what: str, offset: int) -> int:
    """A tar number field: octal text, or GNU base-256 with the high bit set (negative with 0xff)."""
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise TarScanError(f"the tar header at byte {offset} has an invalid {what} field") from None


def _checksums(block: bytes) -> tuple[int, int]:
    # Unsigned and signed sums, the checksum field counted as spaces; old tars used signed chars.
    unsigned = 256 + sum(struct.unpack_from("148B8x356B", block))
    signed = 256 + sum(struct.unpack_from("148b8x356b", block))
    return unsigned, signed


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _padded(size: int) -> int:
    return -(-size // BLOCK_BYTES) * BLOCK_BYTES
