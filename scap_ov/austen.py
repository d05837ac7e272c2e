"""Jane Austen's six novels (public domain) from Debian's `r-cran-janeaustenr`, read with the standard library.

The set-up command fetches the .deb with `apt-get download` (installing it would pull in R). Its
`data/Rdata.rdb` is R's lazy-load database: per object a 4-byte big-endian uncompressed length followed by a
zlib stream holding an XDR-serialised character vector (one element per line of the novel).
"""
from __future__ import annotations

import io
import json
import lzma
import struct
import tarfile
import zlib
from pathlib import Path

from scap_ov.errors import ScapError

DEB_PACKAGE = "r-cran-janeaustenr"
RDB_MEMBER = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
# Order of objects in Rdata.rdb (alphabetical, as its index lists them).
NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")

_STRSXP, _CHARSXP, _NA_LENGTH = 16, 9, -1


def _deb_member(deb: bytes, name: str) -> bytes:
    """Extract one file from a .deb (an `ar` archive holding data.tar.{xz,gz,zst})."""
    if not deb.startswith(b"!<arch>\n"):
        raise ScapError("not a Debian package (missing ar header)")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        member = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if member.startswith("data.tar"):
            if member.endswith(".xz"):
                body = lzma.decompress(body)
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for info in tar.getmembers():
                    if info.name.lstrip("./") == name:
                        return tar.extractfile(info).read()
            raise ScapError(f"{name} not found in the package")
    raise ScapError("the package has no data.tar member")


def _read_character_vector(blob: bytes) -> list[str]:
    """Decode one XDR-serialised R character vector (serialisation format 2 or 3)."""
    if blob[:2] != b"X\n":
        raise ScapError("unexpected R serialisation format (expected XDR)")
    pos = 2
    version, = struct.unpack_from(">i", blob, pos)
    pos += 12  # version, writer R version, minimal reader version
    if version == 3:
        enc_len, = struct.unpack_from(">i", blob, pos)
        pos += 4 + enc_len
    flags, length = struct.unpack_from(">ii", blob, pos)
    pos += 8
    if flags & 0xFF != _STRSXP:
        raise ScapError(f"expected a character vector, found R type {flags & 0xFF}")
    out = []
    for _ in range(length):
        flags, n = struct.unpack_from(">ii", blob, pos)
        pos += 8
        if flags & 0xFF != _CHARSXP:
            raise ScapError("malformed character vector")
        if n == _NA_LENGTH:
            out.append("")
            continue
        out.append(blob[pos : pos + n].decode("utf-8", errors="replace"))
        pos += n
    return out


def read_rdb(rdb: bytes) -> list[list[str]]:
    """All character vectors stored in a lazy-load .rdb, in file order."""
    objects, pos = [], 0
    while pos < len(rdb):
        decomp = zlib.decompressobj()
        raw = decomp.decompress(rdb[pos + 4 :])
        objects.append(_read_character_vector(raw))
        pos = len(rdb) - len(decomp.unused_data)
    return objects


def novels_from_deb(deb_path: Path) -> dict[str, str]:
    """{novel short name: full text with paragraphs separated by blank lines} from the .deb file."""
    vectors = read_rdb(_deb_member(Path(deb_path).read_bytes(), RDB_MEMBER))
    if len(vectors) != len(NOVELS):
        raise ScapError(f"expected {len(NOVELS)} novels in {deb_path}, found {len(vectors)}")
    return {name: "\n".join(lines) for name, lines in zip(NOVELS, vectors)}


def write_corpus(deb_path: Path, out_json: Path) -> Path:
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_json.with_suffix(".tmp")
    tmp.write_text(json.dumps(novels_from_deb(deb_path)))
    tmp.replace(out_json)
    return out_json
