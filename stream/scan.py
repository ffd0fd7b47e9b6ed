"""The compiled scanner: ordinary events read straight into columns, a batch in one call.

Most records of a feed look alike: a flat JSON object of integer ids and counts, an event id
and a small ``context``. :func:`scan` reads a whole batch of them in one compiled pass (numba,
no interpreter lock held) into int64 and float32 columns: ~0.35 us for a 250-byte KuaiRand
record with an 8-field context (~1.5 ns a byte), where the general path (:mod:`stream.event`:
msgspec, then the column checks) takes ~1.2 us. A NUL after the last record stops every run
of bytes (strings, digits, spaces) without a bounds check of its own.

It accepts a record only when it is sure: it checks the record is valid JSON as orjson reads
it (the whole of it, the fields it skips too), that the ids are integers in 64 bits or
strings of 1 to ``max_id_bytes`` bytes, the three counts integers in 64 bits, with at most
one of each field. Anything else it leaves to the general path, which has the exact rules
and the reasons: a backslash in a string (escapes), a byte
outside ASCII, a float where an integer goes, a number the plain screen finds unusual (a digit
run of 100 or an exponent of three digits), an integer of 19 digits or more, nesting 64 deep,
a repeated field, an event id over ``max_id_bytes``, anything malformed. The ranges of the
numbers are checked afterwards, a column at a time, as on the general path.

``explicit`` is read as the general path reads it: 0 or 1 (``false``, ``true``, ``-0``
too) from ``context.explicit``, NaN for anything else or nothing; ``tab`` an integer from 0
to ``MAX_TAB`` from ``context.tab``, -1 for anything else or nothing.

>>> read = scan([b'{"user_id": 7, "video_id": 9, "play_ms": 1, "duration_ms": 2, "ts_ms": 3,'
...              b' "context": {"explicit": true, "x": [1, {}], "tab": 4}}',
...              b'{"user_id": "u7", "video_id": 9, "play_ms": 1, "duration_ms": 2, "ts_ms": 3}',
...              b'{"user_id": "u7", "video_id": 9, "play_ms": 1}'], 1024)
>>> read.ok.tolist(), read.ints[0].tolist(), read.explicit[:1].tolist(), read.tab[:2].tolist()
([True, True, False], [7, 9, 1, 2, 3], [1.0], [4, -1])
>>> read.ids(np.array([0, 1]))
([7, 'u7'], [9, 9])
"""

from __future__ import annotations

from typing import NamedTuple, TypedDict

import numpy as np
from numba import njit

FIELDS = ("user_id", "video_id", "play_ms", "duration_ms", "ts_ms", "event_id", "context")
_EXPLICIT = len(FIELDS)  # the key indices of context's "explicit" and "tab"
_TAB = _EXPLICIT + 1
#: the largest tab read; a larger one, or anything but an integer, is none (-1)
MAX_TAB = 2**31 - 1
_NAMES = [name.encode() for name in (*FIELDS, "explicit", "tab")]
_KEYS = np.frombuffer(b"".join(_NAMES), np.uint8)
_KEY_STARTS = np.cumsum([0] + [len(name) for name in _NAMES]).astype(np.int64)
_TRUE, _FALSE, _NULL = (np.frombuffer(word, np.uint8) for word in (b"true", b"false", b"null"))
_MAX_DEPTH = 64
_MAX_DIGITS = 18  # an integer of at most 18 digits fits in 64 bits
_LONG_RUN, _LONG_EXPONENT = 100, 3  # the plain screen's limits (stream.screen)
# bytes that end a plain string's run: a quote, a backslash, control bytes, non-ASCII
_STOPS = np.zeros(256, np.bool_)
_STOPS[[_c for _c in range(256) if _c in (34, 92) or _c < 32 or _c >= 128]] = True
# the top-level field whose name starts with a byte, -1 for none (the first letters differ)
_FIRST = np.full(256, -1, np.int64)
for _k, _name in enumerate(_NAMES[:len(FIELDS)]):
    _FIRST[_name[0]] = _k
_CONTEXT_FIRST = np.full(256, -1, np.int64)  # the same in the context object
_CONTEXT_FIRST[ord("e")], _CONTEXT_FIRST[ord("t")] = _EXPLICIT, _TAB


class _JitOptions(TypedDict):  # typed, so that **_JIT matches njit's keyword arguments
    cache: bool
    nogil: bool


# No chained comparisons (a <= x <= b) and no loops that break: with numba 0.68 either made
# a helper cost ~12 ns a call, against ~1 ns written as below.
_JIT: _JitOptions = {"cache": True, "nogil": True}

_QUOTE, _BACKSLASH, _COLON, _COMMA, _MINUS, _PLUS, _DOT = 34, 92, 58, 44, 45, 43, 46
_OPEN_OBJ, _OPEN_ARR = 123, 91  # their closing brackets are 2 more
_ZERO, _NINE, _LOWER_E, _UPPER_E, _T, _F, _N = 48, 57, 101, 69, 116, 102, 110
# what the parser expects next
_VALUE, _FIRST_KEY, _FIRST_VALUE, _KEY, _AFTER_VALUE = range(5)
_CONTEXT = 6  # FIELDS.index("context")


@njit(**_JIT)
def _space(b):
    return b == 32 or b == 10 or b == 13 or b == 9


@njit(**_JIT)
def _digit(b):
    return b >= _ZERO and b <= _NINE


@njit(**_JIT)
def _is_key(buf, start, end, k):
    """Whether the name of key ``k`` (of ``_NAMES``) and a closing quote lie at
    ``buf[start:]``, before ``end``."""
    stop = start + _KEY_STARTS[k + 1] - _KEY_STARTS[k]
    if stop >= end or buf[stop] != _QUOTE:
        return False
    base = _KEY_STARTS[k] - start
    for m in range(start, stop):
        if buf[m] != _KEYS[base + m]:
            return False
    return True


@njit(**_JIT)
def _string_end(buf, i):
    """Where the plain string from ``buf[i]`` ends: its closing quote, or the first byte no
    plain string holds (a backslash, a control byte, non-ASCII). ``buf`` ends in a NUL.
    Unsigned indices spare numba's negative-index checks: 0.55 -> 0.28 ns a byte."""
    j, one = np.uint64(i), np.uint64(1)
    while not _STOPS[np.uint64(buf[j])]:
        j += one
    return np.int64(j)


@njit(**_JIT)
def _record(buf, i, end, ints, spans, strs, stack, max_id):
    """Read the record ``buf[i:end]`` into ``ints`` (a string id: its span into ``spans``,
    and ``strs`` says so): (whether it is ordinary, explicit, tab).

    One pass, one loop: ``state`` says what comes next, ``stack`` holds the open brackets.
    ``key`` is the field of the value about to start: 0-6 in the top-level object, 7
    (explicit) or 8 (tab) in the context object (at depth ``context``), -1 anywhere else."""
    explicit, tab = np.nan, -1
    depth, seen, key, context, context_seen = 0, 0, -1, -1, 0
    state = _VALUE
    while True:
        while i < end and _space(buf[i]):
            i += 1
        if i >= end:
            return False, explicit, tab
        b = buf[i]
        field = key if depth == 1 or (depth == context and depth > 1) else -1
        if state == _VALUE:
            if b == _OPEN_OBJ or b == _OPEN_ARR:
                if depth == 0 and b != _OPEN_OBJ:
                    return False, explicit, tab
                if depth == 1 and field >= 0 and field != _CONTEXT or field == _CONTEXT and (
                        b != _OPEN_OBJ):
                    return False, explicit, tab  # a field that is no object, or a list context
                if depth == _MAX_DEPTH:
                    return False, explicit, tab
                if field == _CONTEXT and depth == 1:
                    context = 2
                stack[depth] = b
                depth += 1
                state = _FIRST_KEY if b == _OPEN_OBJ else _FIRST_VALUE
                i += 1
                continue
            if depth == 0:
                return False, explicit, tab
            if b == _QUOTE:  # a string: ASCII, no control bytes, no escapes
                j = _string_end(buf, i + 1)
                if j >= end or buf[j] != _QUOTE:
                    return False, explicit, tab
                if depth == 1 and field >= 0:
                    if field > 1 and field != 5 or j - i - 1 > max_id or j == i + 1 and (
                            field < 2):
                        return False, explicit, tab  # a string where a number goes, a long id,
                    if field < 2:  # an empty id; a string id is kept as its span
                        spans[2 * field], spans[2 * field + 1] = i + 1, j
                        strs[field] = True
                i = j + 1
            elif b == _MINUS or _digit(b):
                j = i + 1 if b == _MINUS else i
                if j >= end or not _digit(buf[j]):
                    return False, explicit, tab
                start, value = j, 0  # the value read as the digits are (wrong past 18)
                if buf[j] == _ZERO:
                    j += 1
                else:
                    while _digit(buf[j]):  # the NUL at the end stops it
                        value = value * 10 + (buf[j] - _ZERO)
                        j += 1
                count = j - start
                integer = count <= _MAX_DIGITS
                if count >= _LONG_RUN:
                    return False, explicit, tab
                if j < end and buf[j] == _DOT:
                    j += 1
                    fraction = j
                    while j < end and _digit(buf[j]):
                        j += 1
                    if j == fraction or j - fraction >= _LONG_RUN:
                        return False, explicit, tab
                    integer = False
                if j < end and (buf[j] == _LOWER_E or buf[j] == _UPPER_E):
                    j += 1
                    if j < end and (buf[j] == _PLUS or buf[j] == _MINUS):
                        j += 1
                    exponent = j
                    while j < end and _digit(buf[j]):
                        j += 1
                    if j == exponent or j - exponent >= _LONG_EXPONENT:
                        return False, explicit, tab
                    integer = False
                if integer and b == _MINUS:
                    value = -value
                if depth == 1 and field >= 0:
                    if field > 4 or not integer:
                        return False, explicit, tab  # a number where a string goes, or no int64
                    ints[field] = value
                elif field == _EXPLICIT and integer and (value == 0 or value == 1):
                    explicit = float(value)
                elif field == _TAB and integer and value >= 0 and value <= MAX_TAB:
                    tab = value
                i = j
            elif b == _T or b == _F or b == _N:
                word = _TRUE if b == _T else (_FALSE if b == _F else _NULL)
                if i + word.size > end:
                    return False, explicit, tab
                for k in range(word.size):
                    if buf[i + k] != word[k]:
                        return False, explicit, tab
                if depth == 1 and field >= 0 and (field != _CONTEXT or b != _N):
                    return False, explicit, tab  # only context may be null
                if field == _EXPLICIT and b != _N:
                    explicit = 1.0 if b == _T else 0.0
                i += word.size
            else:
                return False, explicit, tab
            state = _AFTER_VALUE
            while _space(buf[i]):  # a comma, most often: taken here, not by another turn
                i += 1
            if buf[i] == _COMMA and i < end:
                state = _KEY if stack[depth - 1] == _OPEN_OBJ else _VALUE
                i += 1
        elif state == _FIRST_KEY and b == stack[depth - 1] + 2:  # {}: closed as after a value
            state = _AFTER_VALUE
        elif state == _FIRST_KEY or state == _KEY:
            if b != _QUOTE:
                return False, explicit, tab
            # a known name is matched where it starts (no other key starts like it)
            key = _FIRST[buf[i + 1]] if depth == 1 else (
                _CONTEXT_FIRST[buf[i + 1]] if depth == context else -1)
            if key >= 0 and _is_key(buf, i + 1, end, key):
                j = i + 1 + _KEY_STARTS[key + 1] - _KEY_STARTS[key]
                if key >= _EXPLICIT:
                    if context_seen & (1 << (key - _EXPLICIT)):
                        return False, explicit, tab
                    context_seen |= 1 << (key - _EXPLICIT)
                else:
                    if seen & (1 << key):
                        return False, explicit, tab  # a field twice
                    seen |= 1 << key
            else:
                key = -1
                j = _string_end(buf, i + 1)
                if j >= end or buf[j] != _QUOTE:
                    return False, explicit, tab
            i = j + 1
            while _space(buf[i]):  # the colon: taken here, not by another turn of the loop
                i += 1
            if i >= end or buf[i] != _COLON:
                return False, explicit, tab
            state = _VALUE
            i += 1
        elif state == _FIRST_VALUE:  # [] closes as after a value
            state = _AFTER_VALUE if b == stack[depth - 1] + 2 else _VALUE
        else:  # after a value: a comma, or the end of its container
            if b == _COMMA:
                state = _KEY if stack[depth - 1] == _OPEN_OBJ else _VALUE
            elif b == stack[depth - 1] + 2:
                depth -= 1
                if depth < context:
                    context = -1
                if depth == 0:
                    i += 1
                    while i < end and _space(buf[i]):
                        i += 1
                    return i == end and seen & 31 == 31, explicit, tab
            else:
                return False, explicit, tab
            i += 1


@njit(**_JIT)
def _scan(buf, starts, ends, ints, spans, strs, explicit, tab, ok, max_id):
    stack = np.zeros(_MAX_DEPTH, np.uint8)
    for r in range(starts.size):
        ok[r], explicit[r], tab[r] = _record(buf, starts[r], ends[r], ints[r], spans[r],
                                             strs[r], stack, max_id)


class IntIds(list):
    """A column of integer ids that holds them as an int64 ``array`` too (the scanner's):
    a consumer (the learner's id map) looks them up without reading a Python int. Not to be
    changed once made.

    >>> ids = IntIds(np.array([7, 9]))
    >>> ids == [7, 9], ids.array.dtype.name
    (True, 'int64')
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        super().__init__(array.tolist())
        self.array = array


class StrIds(list):
    """A column of string ids only (the scanner's): a consumer (the learner's id map) takes
    them
    without checking each one's type. Not to be changed once made."""

    __slots__ = ()


class Scanned(NamedTuple):
    """What :func:`scan` read: ``ok`` (bool, which records are ordinary), ``ints`` (int64, a
    row of user_id, video_id, play_ms, duration_ms and ts_ms per record, an id 0 where it is
    a string), ``explicit`` (float32), ``tab`` (int64); meaningful where ``ok``.
    :meth:`ids` gives the ids."""

    ok: np.ndarray
    ints: np.ndarray
    explicit: np.ndarray
    tab: np.ndarray
    spans: np.ndarray  # int64 (n, 4): where each string id lies in ``text``
    strs: np.ndarray  # bool (n, 2): which ids are strings
    text: str  # the records, joined, one character a byte

    def ids(self, rows: np.ndarray) -> tuple[list, list]:
        """The user and video ids (ints and strs) of the records ``rows``."""
        return self._column(rows, 0), self._column(rows, 1)

    def _column(self, rows: np.ndarray, k: int) -> list:
        strs = self.strs[rows, k]
        if not strs.any():
            return IntIds(self.ints[rows, k])
        spans = self.spans[rows, 2 * k: 2 * k + 2]
        texts = list(map(self.text.__getitem__,  # str slices, a C-level loop
                         map(slice, spans[:, 0].tolist(), spans[:, 1].tolist())))
        if strs.all():
            return StrIds(texts)
        return [t if is_str else v for t, v, is_str in zip(
            texts, self.ints[rows, k].tolist(), strs.tolist(), strict=True)]


def scan(values: list[bytes], max_bytes: int, max_id_bytes: int = 128) -> Scanned:
    """Read the ordinary records of ``values`` (bytes, none None; TypeError otherwise).
    Records over ``max_bytes``, or with an id or event id over ``max_id_bytes``, are not
    ordinary."""
    n = len(values)
    lengths = np.fromiter(map(len, values), np.int64, n)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    ints = np.zeros((n, 5), np.int64)
    spans = np.zeros((n, 4), np.int64)
    strs = np.zeros((n, 2), np.bool_)
    explicit = np.empty(n, np.float32)
    tab = np.empty(n, np.int64)
    ok = np.zeros(n, np.bool_)
    joined = b"".join([*values, b"\0"])  # the NUL stops every run at the end
    _scan(np.frombuffer(joined, np.uint8), starts, ends, ints, spans, strs, explicit, tab, ok,
          max_id_bytes)
    ok &= lengths <= max_bytes
    # latin-1 maps byte i to character i: ordinary records are ASCII, their spans the same
    return Scanned(ok, ints, explicit, tab, spans, strs,
                   joined.decode("latin-1") if strs.any() else "")
