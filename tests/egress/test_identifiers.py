"""The identifier scanner: variants, encodings, case, chunk boundaries, the short-needle rule."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from egress.validation import IdentifierError, IdentifierSet, expand_identifier
from egress.validation.identifiers import scan_bytes


def _noise(n: int, seed: int = 0) -> bytes:
    return (np.random.default_rng(seed).normal(0, 0.02, n // 4).astype(np.float32)).tobytes()


def test_expand_birth_date_common_formats():
    variants = set(expand_identifier("birth_date", datetime.date(1970, 1, 31)))
    for text in ("1970-01-31", "31/01/1970", "01/31/1970", "31.01.1970", "19700131", "31 Jan 1970", "January 31, 1970"):
        assert text in variants
    assert expand_identifier("birth_date", "1970-01-31") == expand_identifier("birth_date", datetime.date(1970, 1, 31))


def test_expand_birth_date_bad_value_refused():
    with pytest.raises(IdentifierError):
        expand_identifier("birth_date", "31 January")


def test_expand_name_orders_and_separators():
    variants = set(expand_identifier("name", "  Jane   Doe "))
    assert {"Jane Doe", "Doe Jane", "Doe, Jane", "Jane_Doe", "Doe.Jane", "Jane-Doe"} <= variants
    assert "Jane" not in variants and "Doe" not in variants


def test_expand_phone_and_ids():
    assert {"+44 20 7946 0958", "442079460958", "00442079460958", "44-20-7946-0958"} <= set(expand_identifier("phone", "+44 20 7946 0958"))
    assert {"943 476 5919", "9434765919"} <= set(expand_identifier("national_id", "943 476 5919"))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("text", ["MRN0012345", "mrn0012345", "DOE, JANE", "jane doe", "31.01.1970"])
def test_scan_finds_identifier_in_noise(encoding, text):
    needles = IdentifierSet.build([("mrn", "MRN0012345"), ("name", "Jane Doe"), ("birth_date", "1970-01-31")])
    data = _noise(4096) + text.encode(encoding) + _noise(4096, seed=1)
    hits = scan_bytes(data, needles)
    assert hits and hits[0].offset == 4096
    assert hits[0].encoding == encoding


def test_scan_non_ascii_name_in_upper_case():
    needles = IdentifierSet.build([("name", "Jürgen Müller")])
    for encoding in ("utf-8", "utf-16-le"):
        assert scan_bytes(_noise(512) + "JÜRGEN MÜLLER".encode(encoding), needles)
        assert scan_bytes(_noise(512) + "müller, jürgen".encode(encoding), needles)


def test_scan_needle_of_continuation_bytes_found():
    # 0x80-0xBF Latin-1 signs: in UTF-8 and UTF-16 mostly continuation-class bytes, found through
    # anchor patterns (every needle has a run of six common-class bytes or an anchor).
    needles = IdentifierSet.build([("name", "µ¶µ¶µ¶µ")])
    assert needles._slow is None and len(needles._patterns) > 1
    for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
        assert scan_bytes(_noise(256) + "µ¶µ¶µ¶µ".encode(encoding) + _noise(256), needles), encoding


def test_scan_anchor_pattern_for_dense_non_ascii():
    needles = IdentifierSet.build([("name", "Ülkü Öğüt")])
    assert len(needles._patterns) > 1  # a run pattern plus anchors holding a continuation byte
    for text in ("Ülkü Öğüt", "ÜLKÜ ÖĞÜT", "Öğüt, Ülkü"):
        for encoding in ("utf-8", "utf-16-le"):
            assert scan_bytes(_noise(300) + text.encode(encoding) + _noise(300, seed=5), needles), (text, encoding)


def test_scan_single_non_ascii_word():
    needles = IdentifierSet.build([("name", "Müller")])
    for text in ("Müller", "MÜLLER", "müller"):
        for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
            assert scan_bytes(_noise(300) + text.encode(encoding) + _noise(300, seed=5), needles), (text, encoding)


def test_scan_zero_run_edges():
    needles = IdentifierSet.build([("mrn", "MRN0012345")])
    data = b"\0" * 5000 + "MRN0012345".encode("utf-16-be") + b"\0" * 5000
    # found as UTF-16-BE at 5000 and, shifted by one byte, as UTF-16-LE at 5001
    assert sorted(h.offset for h in scan_bytes(data, needles)) == [5000, 5001]
    assert scan_bytes(b"\0" * 100_000, needles) == []


def test_scan_noise_has_no_hits():
    needles = IdentifierSet.build([("mrn", "MRN0012345"), ("name", "Jane Doe"), ("birth_date", "1970-01-31"), ("phone", "+44 20 7946 0958")])
    assert scan_bytes(_noise(1 << 20), needles) == []


def test_scan_short_identifiers_counted_not_scanned():
    needles = IdentifierSet.build([("mrn", "A123"), ("mrn", "12-34"), ("mrn", "AB123456")])
    assert needles.skipped_short == 3  # "A123", "12-34" and its alphanumeric form "1234"
    assert needles.variants == 1
    assert scan_bytes(b"xxA123xx1234xx", needles) == []
    assert scan_bytes(b"..ab123456..", needles)


def test_scan_across_every_split_point():
    needles = IdentifierSet.build([("mrn", "MRN0012345")])
    data = _noise(64) + "MRN0012345".encode("utf-16-le") + _noise(64, seed=2)
    for split in range(1, len(data)):
        session = needles.session()
        session.feed(data[:split], 0)
        session.feed(data[split:], split)
        assert [hit.offset for hit in session.hits] == [64], split


def test_scan_many_small_pieces():
    needles = IdentifierSet.build([("phone", "+44 20 7946 0958")])
    data = _noise(1000) + b"+44 20 7946 0958" + _noise(1000, seed=3)
    session = needles.session()
    for start in range(0, len(data), 3):
        session.feed(data[start : start + 3], start)
    whole = scan_bytes(data, needles)
    assert min(hit.offset for hit in whole) == 1000
    assert sorted((hit.offset, hit.length) for hit in session.hits) == sorted((hit.offset, hit.length) for hit in whole)


def test_scan_hit_never_carries_value():
    needles = IdentifierSet.build([("mrn", "MRN0012345")])
    hit = scan_bytes(b"..MRN0012345..", needles)[0]
    assert "MRN0012345".lower() not in repr(hit).lower()


def test_identifier_bad_pair_refused():
    with pytest.raises(IdentifierError):
        IdentifierSet.build(["MRN0012345"])
