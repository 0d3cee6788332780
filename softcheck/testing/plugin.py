"""The pytest plugin (``pytest11`` entry point): ``--softcheck-json PATH`` writes every
softcheck case of the session as one report."""

from __future__ import annotations

import time
from typing import Any

from . import COLLECTED

_T0: list[float] = []


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("softcheck")
    group.addoption("--softcheck-json", dest="softcheck_json", default=None, metavar="PATH",
                    help="Write every softcheck case of the session to PATH as one JSON "
                         "report (softcheck schema).")


def pytest_sessionstart(session: Any) -> None:
    COLLECTED.clear()
    _T0[:] = [time.perf_counter()]


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = session.config.getoption("softcheck_json")
    if not path:
        return
    from ..engine.results import Report
    from ..engine.suites import environment
    from ..report import FORMATS
    from ..report.files import write_atomic

    targets = {c.target for c in COLLECTED}
    report = Report(tuple(COLLECTED), "check", {"pytest": True},
                    target=targets.pop() if len(targets) == 1 else None,
                    seconds=time.perf_counter() - (_T0[0] if _T0 else time.perf_counter()),
                    environment=environment())
    write_atomic(path, FORMATS["json"](report))         # no case: passed false, and why


def pytest_terminal_summary(terminalreporter: Any) -> None:
    path = terminalreporter.config.getoption("softcheck_json")
    if path:
        failed = sum(not c.passed for c in COLLECTED)
        terminalreporter.write_line(f"softcheck: {len(COLLECTED)} cases ({failed} failed) "
                                    f"written to {path}" + ("" if COLLECTED else
                                                           ": no case ran, it does not pass"))
