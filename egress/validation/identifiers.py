"""Scan bytes for the direct identifiers of a cohort's patients, streaming, in one pass.

Input: ``(kind, value)`` pairs (or ``{"kind": ..., "value": ...}`` mappings). Each is expanded to
textual variants, each variant is encoded as UTF-8, UTF-16-LE and UTF-16-BE, and all of them are
matched ASCII-case-insensitively (names also in their lower/upper/title forms for non-ASCII letters).

Variants per kind:

* ``mrn``, ``national_id`` and unknown kinds: the value as given (whitespace collapsed) and its
  letters and digits only (``"943 476 5919"`` -> ``"9434765919"``).
* ``name``: as given; for two or more words also all words, ``first last`` and ``last first``
  joined by a space, ``_``, ``.`` or ``-``, and ``"last, first"`` / ``"last,first"``
  (first = first word, last = last word). A single word is scanned on its own. Single words of a multi-word name are not scanned alone: they are too often
  ordinary words (and tensor names contain words such as "weight").
* ``birth_date`` (a ``datetime.date`` or an ISO ``YYYY-MM-DD`` string): 1970-01-31, 1970/01/31,
  31/01/1970, 01/31/1970, 31-01-1970, 31.01.1970, 19700131, 31/1/1970, 1/31/1970, 31 Jan 1970,
  31 January 1970, Jan 31, 1970, January 31, 1970 (and the day without its leading zero in the
  textual forms); English month names.
* ``phone``: as given, digits only, digits with a leading ``+``, ``00`` + digits when given with
  ``+``, and the groups joined by ``-``, ``.`` or nothing.

Minimum length: a variant shorter than ``min_length`` characters (policy default **6**) is not
scanned, because short strings of digits or letters turn up by chance in megabytes of float bytes.
Such variants are counted (``skipped_short``) in the report so a reviewer sees what was not covered.

Speed: pyahocorasick walks about 50 MB/s here, too slow to run over every byte. So a byte-class
prefilter runs first: one ``bytes.translate`` maps every byte that occurs in some needle, and the
zero byte, to ``A`` — except needle bytes 0x80-0xBF, which map to ``C`` because 0xB0-0xBF are the
exponent bytes of small negative floats and would make runs of ``A`` common in any adapter. A needle
whose class string holds ``AAAAAA`` (all ASCII variants in UTF-8 and UTF-16, and most others) is
found through the runs of six or more ``A`` (``bytes.find``, memory speed); the few others get
4-byte anchor patterns holding a ``C`` (chosen by greedy set cover when the set is built, one more
``find`` each); needles with neither go to a second automaton run over every byte. Only windows
around the runs and anchors go through the Aho-Corasick automaton, and runs of zero bytes (zero
tensors) are skipped but for their edges. The matches are exactly those of a full Aho-Corasick pass.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import ahocorasick

ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be")
KNOWN_KINDS = ("mrn", "name", "birth_date", "phone", "national_id")
DEFAULT_MIN_LENGTH = 6
_PREFILTER_RUN = 6  # bytes of needle-class characters that every needle must contain
_RUN_A = b"A" * _PREFILTER_RUN
_ANCHOR = 4
_NOT_A = re.compile(rb"[^A]")
MAX_IDENTIFIER_LENGTH = 256


def _pack(kind_index: int, encoding_index: int, length: int) -> int:
    """Automaton payload as one int (STORE_INTS keeps no Python object per needle)."""
    return (kind_index << 20) | (encoding_index << 16) | length


def _unpack(value: int) -> tuple[int, int, int]:
    return value >> 20, (value >> 16) & 0xF, value & 0xFFFF

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
_ASCII_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


class IdentifierError(ValueError):
    """An identifier could not be read (bad kind, value or date)."""


@dataclass(frozen=True)
class IdentifierHit:
    kind: str
    encoding: str
    offset: int  # absolute byte offset of the match in the scanned stream
    length: int


def _safe_kind(kind: str) -> str:
    return kind if re.fullmatch(r"[a-z_]{1,32}", kind) else "other"


def _collapse(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def _date_variants(value: Any) -> list[str]:
    if isinstance(value, _dt.datetime):
        value = value.date()
    if isinstance(value, str):
        try:
            value = _dt.date.fromisoformat(value.strip())
        except ValueError:
            raise IdentifierError("birth_date must be a date or an ISO YYYY-MM-DD string") from None
    if not isinstance(value, _dt.date):
        raise IdentifierError("birth_date must be a date or an ISO YYYY-MM-DD string")
    y, m, d = f"{value.year:04d}", f"{value.month:02d}", f"{value.day:02d}"
    mu, du = str(value.month), str(value.day)
    long_month = _MONTHS[value.month - 1]
    short_month = long_month[:3]
    out = [
        f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}-{m}-{y}", f"{d}.{m}.{y}",
        f"{y}{m}{d}", f"{du}/{mu}/{y}", f"{mu}/{du}/{y}", f"{du}.{mu}.{y}",
    ]
    for day in dict.fromkeys((d, du)):
        out += [
            f"{day} {short_month} {y}", f"{day} {long_month} {y}",
            f"{short_month} {day}, {y}", f"{long_month} {day}, {y}",
        ]
    return out


def _name_variants(value: str) -> list[str]:
    text = _collapse(value)
    words = text.split(" ")
    out = [text]
    if len(words) >= 2:
        first, last = words[0], words[-1]
        for sep in (" ", "_", ".", "-"):
            out += [sep.join(words), f"{first}{sep}{last}", f"{last}{sep}{first}"]
        out += [f"{last}, {first}", f"{last},{first}"]
    return out


def _phone_variants(value: str) -> list[str]:
    text = _collapse(value)
    digits = "".join(ch for ch in text if ch.isdigit())
    groups = re.findall(r"\d+", text)
    out = [text, digits]
    if text.startswith("+"):
        out += ["+" + digits, "00" + digits]
    for sep in ("-", ".", " ", ""):
        out.append(sep.join(groups))
    return out


def _literal_variants(value: str) -> list[str]:
    text = _collapse(value)
    return [text, _alnum(text)]


def expand_identifier(kind: str, value: Any) -> list[str]:
    """The textual variants scanned for one identifier (before the minimum-length filter)."""
    if kind == "birth_date":
        variants = _date_variants(value)
    else:
        if not isinstance(value, str):
            value = str(value)
        if kind == "name":
            variants = _name_variants(value)
        elif kind == "phone":
            variants = _phone_variants(value)
        else:
            variants = _literal_variants(value)
    return [v for v in dict.fromkeys(variants) if v]


def _case_forms(text: str) -> list[str]:
    return list(dict.fromkeys((text, text.lower(), text.upper(), text.title())))


def _pairs(identifiers: Iterable[Any]) -> Iterable[tuple[str, Any]]:
    for item in identifiers:
        if isinstance(item, Mapping):
            kind, value = item.get("kind"), item.get("value")
        else:
            try:
                kind, value = item
            except (TypeError, ValueError):
                raise IdentifierError("each identifier must be a (kind, value) pair") from None
        if not isinstance(kind, str) or not kind:
            raise IdentifierError("identifier kind must be a non-empty string")
        if value is None or value == "":
            continue
        yield kind.strip().lower(), value


@dataclass
class IdentifierSet:
    """The compiled needles of one cohort. Build once, scan many files."""

    min_length: int = DEFAULT_MIN_LENGTH
    identifiers: int = 0
    variants: int = 0
    skipped_short: int = 0
    needles: int = 0
    max_needle_bytes: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    _kinds: list[str] = field(default_factory=list, repr=False)
    _fast: Any = field(default=None, repr=False)
    _slow: Any = field(default=None, repr=False)
    _class_table: bytes = field(default=b"", repr=False)
    _patterns: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def build(cls, identifiers: Iterable[Any] | None, *, min_length: int = DEFAULT_MIN_LENGTH) -> "IdentifierSet":
        if min_length < 4:
            raise IdentifierError("min_length must be at least 4")
        self = cls(min_length=min_length)
        needles: dict[bytes, tuple[int, str]] = {}
        for kind, value in _pairs(identifiers or ()):
            self.identifiers += 1
            label = _safe_kind(kind)
            if label not in self._kinds:
                self._kinds.append(label)
            kind_index = self._kinds.index(label)
            self.kinds[label] = self.kinds.get(label, 0) + 1
            for variant in expand_identifier(kind, value):
                if len(variant) > MAX_IDENTIFIER_LENGTH:
                    raise IdentifierError(f"an identifier is longer than {MAX_IDENTIFIER_LENGTH} characters")
                if len(variant) < min_length:
                    self.skipped_short += 1
                    continue
                self.variants += 1
                for form in _case_forms(variant):
                    for encoding in ENCODINGS:
                        try:
                            raw = form.encode(encoding)
                        except UnicodeEncodeError:  # lone surrogates and the like
                            continue
                        needles.setdefault(raw.translate(_ASCII_LOWER), (kind_index, encoding))
        self._compile(needles)
        return self

    def _compile(self, needles: dict[bytes, tuple[int, str]]) -> None:
        byte_set = set()
        for raw in needles:
            byte_set.update(raw)
        byte_set.discard(0)
        table = bytearray(b"." * 256)
        for b in range(256):
            lowered = bytes([b]).translate(_ASCII_LOWER)[0]
            if lowered in byte_set:
                # 0x80-0xBF get a class of their own: 0xB0-0xBF are the exponent bytes of small
                # negative floats, common in any adapter. Lead bytes 0xC0-0xFF would be exponents of
                # |x| >= 128 and are as rare as any mantissa byte, so they join the common class.
                table[b] = ord("C") if 0x80 <= lowered < 0xC0 else ord("A")
        table[0] = ord("A")  # so UTF-16 of ASCII text is a run of A like UTF-8 (zero runs are skipped)
        self._class_table = bytes(table)
        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        slow = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        patterns: list[bytes] = [_RUN_A]
        unanchored: dict[bytes, set[bytes]] = {}
        n_fast = n_slow = 0
        for raw, (kind_index, encoding) in needles.items():
            classes = raw.translate(self._class_table)
            payload = _pack(kind_index, ENCODINGS.index(encoding), len(raw))
            self.max_needle_bytes = max(self.max_needle_bytes, len(raw))
            if _RUN_A in classes:
                automaton.add_word(raw.decode("latin-1"), payload)
                n_fast += 1
                continue
            anchors = {
                classes[i : i + _ANCHOR]
                for i in range(len(classes) - _ANCHOR + 1)
                if b"C" in classes[i : i + _ANCHOR]
            }
            if anchors:
                unanchored[raw] = anchors
                automaton.add_word(raw.decode("latin-1"), payload)
                n_fast += 1
            else:
                slow.add_word(raw.decode("latin-1"), payload)
                n_slow += 1
        # greedy set cover: few anchor patterns, each one more find() per chunk
        while unanchored:
            counts: dict[bytes, int] = {}
            for anchors in unanchored.values():
                for a in anchors:
                    counts[a] = counts.get(a, 0) + 1
            best = max(sorted(counts), key=lambda a: counts[a])
            patterns.append(best)
            unanchored = {raw: anchors for raw, anchors in unanchored.items() if best not in anchors}
        self._patterns = tuple(patterns)
        self.needles = len(needles)
        if n_fast:
            automaton.make_automaton()
            self._fast = automaton
        if n_slow:
            slow.make_automaton()
            self._slow = slow

    @property
    def empty(self) -> bool:
        return self.needles == 0

    def figures(self) -> dict[str, Any]:
        return {
            "identifiers": self.identifiers,
            "kinds": dict(self.kinds),
            "variants_scanned": self.variants,
            "variants_skipped_short": self.skipped_short,
            "min_length": self.min_length,
            "needles": self.needles,
        }

    def session(self, *, max_hits: int = 100) -> "ScanSession":
        return ScanSession(self, max_hits=max_hits)


class ScanSession:
    """Feed consecutive pieces of one stream; keeps an overlap so matches across pieces are found."""

    def __init__(self, needles: IdentifierSet, *, max_hits: int = 100) -> None:
        self._set = needles
        self._overlap = max(needles.max_needle_bytes - 1, 0)
        self._tail = b""
        self._tail_offset = 0
        self._seen: set[tuple[int, int, int]] = set()
        self.hits: list[IdentifierHit] = []
        self.max_hits = max_hits
        self.bytes_scanned = 0
        self.windows = 0

    @property
    def full(self) -> bool:
        return len(self.hits) >= self.max_hits

    def feed(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """``data`` starts at absolute ``offset``; pieces must be fed in order without gaps."""
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        self.bytes_scanned += len(data)
        if self._set.empty:
            return
        contiguous = bool(self._tail) and self._tail_offset + len(self._tail) == offset
        if contiguous and not self.full and self._overlap:
            # matches that straddle the previous piece and this one
            self._scan(self._tail + data[: self._overlap], self._tail_offset)
        if not self.full:
            self._scan(data, offset)
        if self._overlap:
            if len(data) >= self._overlap:
                self._tail = bytes(data[len(data) - self._overlap:])
                self._tail_offset = offset + len(data) - self._overlap
            else:
                joined = (self._tail if contiguous else b"") + bytes(data)
                keep = min(self._overlap, len(joined))
                self._tail = joined[len(joined) - keep:]
                self._tail_offset = offset + len(data) - keep

    def _scan(self, buf: bytes | bytearray, base: int) -> None:
        s = self._set
        if s._fast is not None:
            classes = buf.translate(s._class_table)
            span = s.max_needle_bytes
            size = len(buf)
            for pattern in s._patterns:
                pos = classes.find(pattern)
                while pos != -1:
                    if pattern is _RUN_A:
                        # the whole run of needle-class bytes; every needle occurrence touching it
                        # lies in [run start - span, run end + span)
                        found = _NOT_A.search(classes, pos)
                        end = found.start() if found else size
                        if end - pos > 4 * span and buf.count(0, pos, end) == end - pos:
                            # a run of zero bytes (e.g. zero tensors) holds no needle: check its edges
                            self._window(buf, max(pos - span, 0), min(pos + span, size), base)
                            self._window(buf, max(end - span, 0), min(end + span, size), base)
                        else:
                            self._window(buf, max(pos - span, 0), min(end + span, size), base)
                        nxt = end
                    else:
                        self._window(buf, max(pos - span, 0), min(pos + 2 * span, size), base)
                        nxt = pos + span
                    if self.full:
                        return
                    pos = classes.find(pattern, nxt)
        if s._slow is not None:
            self._run(s._slow, buf, base)

    def _window(self, buf: bytes | bytearray, lo: int, hi: int, base: int) -> None:
        self.windows += 1
        self._run(self._set._fast, buf[lo:hi], base + lo)

    def _run(self, automaton: Any, window: bytes, base: int) -> None:
        text = window.translate(_ASCII_LOWER).decode("latin-1")
        for end, payload in automaton.iter(text):
            kind_index, encoding_index, length = _unpack(payload)
            encoding = ENCODINGS[encoding_index]
            start = base + end - length + 1
            key = (start, length, kind_index)
            if key in self._seen:
                continue
            self._seen.add(key)
            self.hits.append(IdentifierHit(kind=self._set._kinds[kind_index], encoding=encoding, offset=start, length=length))
            if self.full:
                return


def scan_bytes(data: bytes, identifiers: IdentifierSet | Iterable[Any], *, min_length: int = DEFAULT_MIN_LENGTH) -> list[IdentifierHit]:
    """Convenience: every hit in ``data``."""
    needles = identifiers if isinstance(identifiers, IdentifierSet) else IdentifierSet.build(identifiers, min_length=min_length)
    session = needles.session(max_hits=10_000)
    session.feed(data, 0)
    return session.hits


def name_mentions_identifier(name: str, needles: IdentifierSet) -> bool:
    """Whether a short string (a file name) contains an identifier, in any encoding or case."""
    return bool(scan_bytes(name.encode("utf-8", "surrogateescape"), needles))
