"""Conversions between weight layouts, each a plan over ``llmkit.io`` formats run by the one runner:
``from-meta`` / ``to-meta`` (Meta ``consolidated.NN.pth`` ⇄ Hugging Face, :mod:`llmkit.convert.meta`)."""

from llmkit.convert.meta import ConvertResult, FromMetaOptions, ToMetaOptions, from_meta, to_meta

__all__ = ["ConvertResult", "FromMetaOptions", "ToMetaOptions", "from_meta", "to_meta"]
