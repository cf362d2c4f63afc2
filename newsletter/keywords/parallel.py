"""The forked scan: large lists of papers scanned in shares by forked children of the matching process."""

from __future__ import annotations

import os
from array import array
from itertools import accumulate
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from newsletter.keywords.engine import KeywordIndex, PaperText

# Below this many papers a forked process costs more than it saves.
_MIN_PAPERS_PER_PROCESS = 250


class _ForkedScan:
    """A forked child scanning a share of the papers with the index it inherited (no copy, no rebuild).

    os.fork rather than multiprocessing: a Celery worker process is a daemon, and multiprocessing
    refuses children to daemons. The child sends [count, lengths..., term ids...] down a pipe.
    """

    def __init__(self, pid: int, pipe: int, count: int) -> None:
        self.pid, self.pipe, self.count = pid, pipe, count
        self.done = False

    @classmethod
    # Any key type: the child only finds each paper's present terms, which do not depend on the keys.
    def start(cls, index: KeywordIndex[Any], papers: list[PaperText]) -> _ForkedScan | None:
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            return None
        if pid == 0:
            # The child leaves through os._exit whatever happens: none of the parent's cleanup
            # (database connections, temporary files, atexit) may run twice.
            status = 1
            try:
                os.close(read_end)
                found = [index._present_terms(paper) for paper in papers]
                payload = array("i", [len(found), *map(len, found)])
                payload.extend(term_id for present in found for term_id in present)
                with open(write_end, "wb") as pipe:
                    pipe.write(payload.tobytes())
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        return cls(pid, read_end, len(papers))

    def collect(self) -> list[set[int]] | None:
        """Each paper's present terms, or None when the child failed."""
        with open(self.pipe, "rb") as pipe:
            data = pipe.read()
        self.done = True
        _, status = os.waitpid(self.pid, 0)
        values = array("i")
        values.frombytes(data[: len(data) - len(data) % values.itemsize])
        if status != 0 or not values or values[0] != self.count:
            return None
        lengths, flat = values[1 : 1 + self.count], values[1 + self.count :]
        if sum(lengths) != len(flat):
            return None
        ends = list(accumulate(lengths))
        return [set(flat[end - length : end]) for end, length in zip(ends, lengths, strict=True)]

    def close(self) -> None:
        """Reap a child whose share was not collected (a write to the closed pipe ends it)."""
        if not self.done:
            self.done = True
            os.close(self.pipe)
            os.waitpid(self.pid, 0)

