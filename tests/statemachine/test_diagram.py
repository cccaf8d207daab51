"""docs/statemachine.md is generated from the table; it must not drift from the code."""

from __future__ import annotations

from pathlib import Path

from statemachine import diagram
from statemachine.machine import TRANSITIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "statemachine.md"


def test_doc_matches_the_code() -> None:
    assert DOC.read_bytes() == diagram.markdown().encode(), (
        "docs/statemachine.md is out of date: run `python -m statemachine.diagram` "
        "from the project root and commit the result"
    )


def test_mermaid_has_every_transition() -> None:
    text = diagram.mermaid()
    assert text.startswith("stateDiagram-v2\n    [*] --> bot\n")
    for spec in TRANSITIONS:
        assert f"    {spec.source} --> {spec.dest}: {spec.trigger} [" in text
        for reason in spec.reasons:
            assert reason in text
