"""The published xlsa17 benchmarks' shapes (REFERENCE §1), in one place.

Read by the benchmark-shape warning of ``zsl-train`` (data run under a benchmark's name must have its shapes),
the simulator (the published seen/unseen/val class counts) and ``zsl-bench`` (simulated data of each shape).
"""

from __future__ import annotations

from typing import NamedTuple


class Benchmark(NamedTuple):
    """One benchmark's published split.

    Attributes:
        n_seen, n_unseen: classes seen in training / unseen (``n_seen + n_unseen`` classes in all).
        n_val_classes: the ``val_loc`` classes (a subset of the seen ones: split=val's unseen classes).
        samples: ``(trainval, test_seen, test_unseen)`` sample counts.
        locs: ``(train, val)`` sample counts of ``train_loc`` / ``val_loc``.
        semantic_dims: semantic space -> dimension (``{"att": 312, "sent": 1024}``).
    """

    n_seen: int
    n_unseen: int
    n_val_classes: int
    samples: tuple[int, int, int]
    locs: tuple[int, int]
    semantic_dims: dict[str, int]

    @property
    def n_classes(self) -> int:
        return self.n_seen + self.n_unseen


BENCHMARKS = {
    "CUB": Benchmark(150, 50, 50, (7057, 1764, 2967), (5875, 2946), {"att": 312, "sent": 1024}),
    "SUN": Benchmark(645, 72, 65, (10320, 2580, 1440), (11600, 1300), {"att": 102}),
    "AWA1": Benchmark(40, 10, 13, (19832, 4958, 5685), (16864, 7926), {"att": 85}),
    "AWA2": Benchmark(40, 10, 13, (23527, 5882, 7913), (16187, 7340), {"att": 85}),
    "APY": Benchmark(20, 12, 5, (5932, 1483, 7924), (4906, 1026), {"att": 64}),
    "FLO": Benchmark(82, 20, 20, (5631, 1403, 1155), (5878, 1156), {"sent": 1024}),
}
