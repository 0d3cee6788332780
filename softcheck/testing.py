"""pytest helper: ``assert_gradient_correct(fn, **options)``.

The AssertionError message is softcheck's diagnosis of every failing case.
"""

from __future__ import annotations


def assert_gradient_correct(fn, **options) -> None:
    """Check ``fn(logits, target, **kw)`` over the suite; raise AssertionError if wrong."""
    import softcheck
    from softcheck.report.text import failure_text

    report = softcheck.check(fn, **options)
    if not report.passed:
        s = report.summary()
        details = "\n".join(failure_text(c) for c in report.failed[:5])
        more = f"\n... and {s['failed'] - 5} more" if s["failed"] > 5 else ""
        raise AssertionError(f"gradient is wrong in {s['failed']} of {s['total']} cases:\n"
                             f"{details}{more}")
