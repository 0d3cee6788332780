"""JUnit XML: one testsuite per group, one testcase per case (CI test reporters)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .._version import __version__
from ..engine.results import Report
from .escape import xml
from .text import NO_CASES, by_group, failure_text, why


def _el(parent, tag: str, text: str | None = None, **attrs) -> ET.Element:
    """An element whose attributes and text went through ``escape.xml`` (a candidate's
    message or output may hold a NUL or an ESC, which no XML parser reads)."""
    e = ET.SubElement(parent, tag, {k: xml(v) for k, v in attrs.items()})
    if text is not None:
        e.text = xml(text)
    return e


def to_junit(report: Report) -> str:
    """JUnit XML: one testsuite per group (with the environment as properties), one testcase
    per case; a failure's message is its most telling reason, its text the whole diagnosis.
    A report without a case is one failing testcase (reporters count zero tests as a pass)."""
    groups = by_group(report)
    env = {"softcheck": __version__, **report.environment}
    root = ET.Element("testsuites", name="softcheck", tests=str(len(report.cases) or 1),
                      failures=str(len(report.failed) or int(not report.cases)),
                      time=f"{report.seconds:.3f}")
    if not report.cases:
        suite = _el(root, "testsuite", name=report.command, tests="1", failures="1",
                    errors="0", skipped="0", time="0.000")
        _el(_el(suite, "testcase", classname=f"softcheck.{report.command}", name="no case ran",
                time="0.000"), "failure", message=NO_CASES, type="NoCases")
    for name, cases in groups.items():
        suite = _el(root, "testsuite", name=name, tests=str(len(cases)),
                    failures=str(sum(not c.passed for c in cases)), errors="0",
                    skipped="0", time=f"{sum(c.seconds for c in cases):.3f}")
        props = _el(suite, "properties")
        for k, v in env.items():
            _el(props, "property", name=k, value=str(v))
        for case in cases:
            tc = _el(suite, "testcase", classname=f"softcheck.{name}", name=case.name,
                     time=f"{case.seconds:.3f}")
            if not case.passed:
                _el(tc, "failure", failure_text(case), message=why(case),
                    type="GradientMismatch")
            out = [f"note: {n}" for n in case.notes] + ([case.output] if case.output else [])
            if out:
                _el(tc, "system-out", "\n".join(out))
    return ET.tostring(root, encoding="unicode", xml_declaration=True)
