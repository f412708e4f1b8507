"""PySyft 0.2's `sy.PrivateGridNetwork(*workers)`: several workers searched as one.

`grid.search("#boston", "#data")` asks every worker and answers {worker id: [pointers]} for
the workers that hold something carrying all the tags, as PySyft's did. Workers reach each
other by the addresses pointers carry, so the grid connects nothing.
"""

from __future__ import annotations

from typing import Any


class PrivateGridNetwork:
    def __init__(self, *workers: Any) -> None:
        self.workers = list(workers)

    def search(self, *query: str | list[str]) -> dict[str, list[Any]]:
        """Pointers to what each worker holds carrying all of `query`'s tags, by worker id;
        a worker with none is left out. Each search is one round trip to that worker."""
        results = {}
        for worker in self.workers:
            found = worker.search(*query)
            if found:
                results[worker.id] = found
        return results

    def __repr__(self) -> str:
        return f"<PrivateGridNetwork {', '.join(w.id for w in self.workers)}>"
