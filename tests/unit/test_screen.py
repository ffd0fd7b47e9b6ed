"""The compiled plain screen says what the screen's definition says, byte for byte."""

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.screen import DEPTH, all_plain, plain

# the definition: digits to 0, E to e, + deleted; then no "e000" and no run of 100 zeros
_TABLE = bytes.maketrans(b"123456789E", b"000000000e")


def _by_definition(value: bytes) -> bool:
    screened = value.translate(_TABLE, b"+")
    flat = len(value) < 2 * DEPTH or value.count(b"[") + value.count(b"{") < DEPTH
    return value.isascii() and b"e000" not in screened and b"0" * 100 not in screened and flat


_PIECES = st.sampled_from([b"e", b"E", b"+", b"-", b"0", b"7", b"9", b"1" * 60, b"x", b"{",
                           b"[", b'"', b",", b"\n", b"\xc3\xa9", b"\x7f", b"\x80", b"."])


@settings(max_examples=500, deadline=None)
@given(st.lists(_PIECES, max_size=40).map(b"".join))
def test_the_screen_is_its_definition(value):
    assert plain(value) is _by_definition(value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_PIECES, max_size=12).map(b"".join), min_size=1, max_size=6))
def test_a_batch_is_plain_when_every_value_is(values):
    # joined with a newline, which ends a run: the batch's answer is every value's
    assert all_plain(values, max(map(len, values))) is all(map(_by_definition, values))


def test_the_edges_of_runs_and_exponents():
    assert plain(b"1" * 99) and not plain(b"1" * 100) and not plain(b"5" * 50 + b"+" + b"5" * 50)
    assert plain(b"1e99") and not plain(b"1e999") and not plain(b"1E+100") and plain(b"1e-300")
    assert plain(b"e12x3") and not plain(b"ee123")
    nested = b"[" * DEPTH + b"]" * DEPTH
    assert not plain(nested) and plain(b"[" * (DEPTH - 1) + b"]" * (DEPTH - 1))
    assert not all_plain([b"1", b"2"], longest=2 * DEPTH)  # too long to be sure it is flat
