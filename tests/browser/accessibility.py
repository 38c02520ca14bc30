"""axe-core in the browser tests: injected with Playwright, it reports the page's accessibility violations.

axe-core comes from npm (tests/browser/axe/package.json and its lock file; `make browser` runs `npm ci` there). A
test that checks with axe is skipped, saying so, when it is not installed (no npm on the machine)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

AXE_JS = Path(__file__).parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
# What the issue holds the pages to: no violation of these impacts.
BLOCKING_IMPACTS = ("serious", "critical")


@cache
def _axe_source() -> str:
    return AXE_JS.read_text()


def require_axe() -> None:
    if not AXE_JS.is_file():
        pytest.skip(f"axe-core is not installed ({AXE_JS}): `make browser` installs it with npm (npm ci)")


def axe_violations(page: Page, *, impacts: tuple[str, ...] = BLOCKING_IMPACTS) -> list[dict[str, Any]]:
    """axe's violations on the page as it is now (WCAG 2.x A and AA rules and best practices), of these impacts."""
    require_axe()
    # Evaluated through the DevTools protocol, so the page's Content-Security-Policy (no inline scripts) allows it.
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(_axe_source())
    results: dict[str, Any] = page.evaluate(
        """async () => await axe.run(document, {
            runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"] },
            resultTypes: ["violations"],
        })"""
    )
    return [violation for violation in results["violations"] if violation.get("impact") in impacts]


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        lines.append(f"{violation['impact']}: {violation['id']}: {violation['help']}")
        for node in violation["nodes"][:5]:
            lines.append(f"    {node['target']}: {node.get('failureSummary', '').splitlines()[-1:]}")
    return "\n".join(lines)


def assert_accessible(page: Page, where: str) -> None:
    violations = axe_violations(page)
    assert not violations, f"axe found serious or critical violations on {where}:\n{describe(violations)}"
