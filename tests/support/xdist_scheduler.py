"""How `make test` spreads the suite over its pytest-xdist workers (`-n 2
--dist loadfile`; tests/conftest.py hands xdist this scheduler for loadfile):
xdist's load-file scheduling, a worker taking the next file whenever it is
down to its last two tests, with the whole of tests/acceptance/ as one unit,
handed out first.

The acceptance suite keeps one corpus of everything it saw, in its test
process, for test_zz_secrets.py (collected last) to grep, and shares one live
server between its outside-in tests: it runs on one worker, in collection
order. It is also the longest unit by far (about four minutes of the suite's
ten on one core), so it starts first and the other worker fills in beside it.

By path rather than with `xdist_group` marks and `--dist loadgroup`: xdist 3.8
tells its controller about a mark by appending "@group" to the test's node id,
which pytest 9.2 no longer reads (pytest-xdist issue 1386), so the marks would
be dropped without a word.
"""
from __future__ import annotations

from xdist.scheduler import LoadFileScheduling
from xdist.workermanage import WorkerController

ACCEPTANCE = "tests/acceptance/"


class AcceptanceTogether(LoadFileScheduling):
    """Load-file scheduling with tests/acceptance/ as one unit, handed out first."""

    def _split_scope(self, nodeid: str) -> str:
        return ACCEPTANCE if nodeid.startswith(ACCEPTANCE) else super()._split_scope(nodeid)

    def _assign_work_unit(self, node: WorkerController) -> None:
        if ACCEPTANCE in self.workqueue:
            self.workqueue.move_to_end(ACCEPTANCE, last=False)
        super()._assign_work_unit(node)
