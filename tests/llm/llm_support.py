"""Values shared by the llm tests."""

from __future__ import annotations

from llm.base import AnswerRequest, Turn
from retrieval.base import Hit
from warmline.models import Chunk

RETURNS = Chunk(
    tenant="demo",
    doc_id="returns-policy",
    chunk_id="returns-policy#1",
    title="Returns policy",
    url="https://help.example/returns-policy",
    text=(
        "## How long do I have to return an item?\n\n"
        "You can return most items within 30 days of delivery for a full refund. "
        "Items must be unused and in their original packaging. "
        "Final-sale items cannot be returned."
    ),
    heading_path=("Returns policy", "How long do I have to return an item?"),
)
REFUNDS = Chunk(
    tenant="demo",
    doc_id="refunds",
    chunk_id="refunds#1",
    title="Refunds",
    url="https://help.example/refunds",
    text=(
        "Refunds go back to your original payment method. "
        "Card refunds take 5 to 10 business days to appear on your statement."
    ),
)
SHIPPING = Chunk(
    tenant="demo",
    doc_id="shipping",
    chunk_id="shipping#1",
    title="Shipping options",
    url="https://help.example/shipping",
    text="Standard shipping takes 3 to 5 business days. Express shipping takes 1 to 2 days.",
)


def make_request(
    question: str = "How long do I have to return an item?",
    hits: tuple[Hit, ...] = (Hit(RETURNS, 12.0), Hit(REFUNDS, 6.0), Hit(SHIPPING, 2.0)),
    confidence: float = 0.9,
    history: tuple[Turn, ...] = (),
) -> AnswerRequest:
    return AnswerRequest("demo", question, hits, confidence, history)


class Deltas:
    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def __call__(self, piece: str) -> None:
        self.pieces.append(piece)

    @property
    def text(self) -> str:
        return "".join(self.pieces)
