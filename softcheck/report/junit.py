"""JUnit XML: one testsuite per group, one testcase per case (CI test reporters)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .._version import __version__
from ..engine.results import Report
from .text import by_group, failure_text, why


def to_junit(report: Report) -> str:
    """JUnit XML: one testsuite per group (with the environment as properties), one testcase
    per case; a failure's message is its most telling reason, its text the whole diagnosis."""
    groups = by_group(report)
    env = {"softcheck": __version__, **report.environment}
    root = ET.Element("testsuites", name="softcheck", tests=str(len(report.cases)),
                      failures=str(len(report.failed)), time=f"{report.seconds:.3f}")
    for name, cases in groups.items():
        suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)),
                              failures=str(sum(not c.passed for c in cases)), errors="0",
                              skipped="0", time=f"{sum(c.seconds for c in cases):.3f}")
        props = ET.SubElement(suite, "properties")
        for k, v in env.items():
            ET.SubElement(props, "property", name=k, value=str(v))
        for case in cases:
            tc = ET.SubElement(suite, "testcase", classname=f"softcheck.{name}", name=case.name,
                               time=f"{case.seconds:.3f}")
            if not case.passed:
                f = ET.SubElement(tc, "failure", message=why(case), type="GradientMismatch")
                f.text = failure_text(case)
            out = [f"note: {n}" for n in case.notes] + ([case.output] if case.output else [])
            if out:
                ET.SubElement(tc, "system-out").text = "\n".join(out)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)
