"""``to-ckpt`` / ``from-ckpt``: Hugging Face ⇄ MindSpore ``.ckpt`` with MindFormers names, streaming.

Both are plans run by the one runner (``llmkit.pipeline.run_plan``); ``ckpt`` is one more sink format
(``llmkit.io.mindspore.sink``) and one more source format (``llmkit.io.mindspore.source``). The modules:
``ckpt_options`` (the options, :class:`CkptResult`, what both directions share), ``to_ckpt``, ``from_ckpt``.

- to-ckpt: any model llmkit reads (HF folder or file, Meta folder via its HF view) -> tensors in
  transformers' state-dict order (as the MindFormers converter writes them), MindFormers names (``--names hf`` keeps HF names), the requested dtype (one cast), wq/wk
  un-permuted to Meta's interleaved rows with ``--rotary meta`` (MindFormers r0.6). Empty tensors are
  left out, as ``mindspore.save_checkpoint`` leaves them out. ``--format safetensors`` writes the same
  tensors as MindFormers-named safetensors in a folder.
- from-ckpt: a ``.ckpt`` -> an HF LLaMA folder: HF names, rotary rows back to rotate-half with
  ``--rotary meta``, ``config.json`` from ``--config`` (checked against the shapes) or, for a published
  LLaMA size only (the shapes decide the head count), derived from the shapes with a notice naming what
  was guessed. Every tensor the config describes must be there, once, in its shape, and no name may be a
  damaged copy of one (``llmkit.io.core.llama_tensors``). Tensors with no HF name are left out with a notice
  saying what their names show (training state: optimizer moments, step counters; rotary buffers; other),
  or refused with ``--strict``.
  A CRC trailer is checked while the tensors stream and before the output is renamed.
"""

from __future__ import annotations

from llmkit.convert.ckpt_options import FROM_NAMES, TO_NAMES, CkptResult, FromCkptOptions, ToCkptOptions
from llmkit.convert.from_ckpt import from_ckpt
from llmkit.convert.to_ckpt import to_ckpt

__all__ = ["FROM_NAMES", "TO_NAMES", "CkptResult", "FromCkptOptions", "ToCkptOptions", "from_ckpt", "to_ckpt"]
