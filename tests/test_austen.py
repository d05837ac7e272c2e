import struct
import zlib

import pytest

from scap_ov import assets, austen


def _xdr_character_vector(strings, version=3):
    out = b"X\n" + struct.pack(">iii", version, 0x040201, 0x030500)
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 16, len(strings))
    for s in strings:
        if s is None:
            out += struct.pack(">ii", 9, -1)
        else:
            raw = s.encode()
            out += struct.pack(">ii", 0x00040009, len(raw)) + raw
    return out


def _rdb(*vectors):
    blob = b""
    for v in vectors:
        blob += struct.pack(">I", len(v)) + zlib.compress(v)
    return blob


def test_reads_lazy_load_database():
    a = _xdr_character_vector(["EMMA", "", "by Jane Austen", None])
    b = _xdr_character_vector(["Persuasion"], version=2)
    assert austen.read_rdb(_rdb(a, b)) == [["EMMA", "", "by Jane Austen", ""], ["Persuasion"]]


def test_rejects_non_xdr_and_wrong_type():
    with pytest.raises(austen.ScapError, match="XDR"):
        austen.read_rdb(_rdb(b"A\n123"))
    bad = _xdr_character_vector(["x"]).replace(struct.pack(">ii", 16, 1), struct.pack(">ii", 14, 1))
    with pytest.raises(austen.ScapError, match="character vector"):
        austen.read_rdb(_rdb(bad))


def test_paragraphs_unwrap_hard_wrapped_lines():
    assert assets.paragraphs("one\ntwo\n\n\nthree  \n four\n") == ["one two", "three four"]


def test_packaged_corpus_holds_six_novels_with_disjoint_splits():
    books = assets.novels()
    assert sorted(books) == sorted(austen.NOVELS)
    assert all(len(text) > 400_000 for text in books.values())
    assert "Elinor" in books["sensesensibility"] and "Anne Elliot" in books["persuasion"]
    assert not set(assets.CALIBRATION_NOVELS) & set(assets.EVALUATION_NOVELS)
    assert {assets.PERPLEXITY_NOVEL, assets.CLOZE_NOVEL} <= set(assets.EVALUATION_NOVELS)
