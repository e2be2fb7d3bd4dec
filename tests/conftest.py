"""Suite-wide hooks.

Austen's novels come from Debian's package archive (``longctx.generate.austen``). On a machine
without ``apt-get`` (RHEL, Rocky, SLES) where nobody copied them into ``data/austen``, a test that
reads them is reported as skipped, with the reason, instead of failed. On CI (``$CI`` set, a
Debian machine) nothing is skipped: a missing corpus there is a failure.
"""

from __future__ import annotations

import os

import pytest

from longctx.generate.austen import AustenUnavailable


def _austen_unavailable(error: BaseException | None) -> AustenUnavailable | None:
    seen = set()
    while error is not None and id(error) not in seen:     # also when wrapped by another exception
        if isinstance(error, AustenUnavailable):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    missing = _austen_unavailable(call.excinfo.value) if call.excinfo is not None else None
    if missing is not None and not os.environ.get("CI"):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: needs Austen's novels: {missing}")
