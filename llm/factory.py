"""Choose the answerer from configuration."""

from __future__ import annotations

from llm.base import Answerer
from llm.extractive import ExtractiveAnswerer
from warmline.config import Config


def build_answerer(config: Config) -> Answerer:
    """No LLM base URL: the extractive answerer; else the LLM, falling back to extractive."""
    if not config.llm_base_url:
        return ExtractiveAnswerer()
    from llm.openai_answerer import OpenAIAnswerer

    return OpenAIAnswerer.from_config(config, fallback=ExtractiveAnswerer(instrument=False))
