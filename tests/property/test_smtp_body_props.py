"""smtp/body.py: BDAT's ChunkBody decides exactly as DATA's DataBlock does, however the content is
cut into chunks and pieces (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.smtp.body import ChunkBody, DataBlock

MAX_LINE = 40
MAX_SIZE = 600

# Lines of content, each ending in CRLF; some over the limit, some with a bare CR or LF inside.
_line = st.builds(lambda text, end: text + end,
                  st.binary(max_size=2 * MAX_LINE).map(lambda b: b.replace(b"\r\n", b"")),
                  st.just(b"\r\n"))
_content = st.lists(_line, max_size=25).map(b"".join)


def _data_verdict(content: bytes) -> tuple[str | None, bytes]:
    block = DataBlock(MAX_SIZE, MAX_LINE)
    for line in content.split(b"\r\n")[:-1]:
        stuffed = b"." + line if line.startswith(b".") else line
        assert not block.feed(stuffed + b"\r\n")
    assert block.feed(b".\r\n")
    return block.problem, block.message()


def _cut(content: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(content)) for c in cuts})
    edges = [0, *points, len(content)]
    return [content[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@given(_content, st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_chunks_decide_as_data_does(content: bytes, cuts: list[int]) -> None:
    body = ChunkBody(MAX_SIZE, MAX_LINE)
    for piece in _cut(content, cuts):
        body.feed(piece)
    body.finish()
    problem, message = _data_verdict(content)
    assert (body.problem is None) == (problem is None), (body.problem, problem)
    if problem is None:
        assert body.message() == message == content
    else:
        assert body.message() == b""  # nothing of a refused message is kept


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_any_octets_in_any_pieces_end_bounded(data: bytes, cuts: list[int]) -> None:
    body = ChunkBody(MAX_SIZE, MAX_LINE)
    for piece in _cut(data, cuts):
        body.feed(piece)
    body.finish()
    if body.problem is None:
        assert body.message() == (data if data.endswith(b"\r\n") or not data else data + b"\r\n")
        assert len(body.message()) <= MAX_SIZE
    assert len(body._carry) <= MAX_LINE  # noqa: SLF001 (the bound is the point of the test)
