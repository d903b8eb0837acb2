"""Merge peft LoRA adapters into a base model, streaming (SPEC.md section 3).

The merge is peft's ``PeftModel.from_pretrained(base, adapter).merge_and_unload()``, applied for each adapter
in order, written out one tensor at a time:

- **delta**: ``W += transpose_if(fan_in_fan_out)(B @ A) * scaling`` with ``scaling = lora_alpha / r``
  (``lora_alpha / sqrt(r)`` with ``use_rslora``; ``rank_pattern``/``alpha_pattern`` per module). ``B @ A`` is
  computed in fp32 whatever the weight dtype.
- **rounding**: the fp32 delta is added to the weight in fp32 and the sum is rounded once to the weight
  dtype: ``W' = round(float(W) + delta)``. That is what peft 0.21 does by default (it loads LoRA weights as
  fp32, ``autocast_adapter_dtype=True``, and ``W += delta`` promotes), so fp32, fp16 and bf16 results equal
  peft's bit for bit. Older peft (and ``autocast_adapter_dtype=False``) rounded the delta to fp16 first and
  then added (two roundings); that differs from llmkit by at most one ulp.
- **dtype** (``--dtype``; ``keep`` = each tensor's own): a tensor that keeps its dtype is merged in it, each
  adapter's sum rounded, as peft merging into the model as loaded. A tensor converted to another dtype is
  merged in fp32 (the base exactly, every adapter's delta) and cast once: ``round_out(float32(W) + delta)``,
  not ``round_out(W) + delta`` (two roundings); a tensor no adapter changes is cast once.
- **fan_in_fan_out** is decided by the base weight's layout, as peft decides by the layer type: a Linear
  weight ``[out, in]`` never transposes (peft overrides ``fan_in_fan_out=true`` with a warning), a GPT-2
  ``Conv1D`` weight ``[in, out]`` always does. LoRA on an embedding adds ``(B @ A)^T``.
- **full tensors** in the adapter (``modules_to_save`` such as Chinese-LLaMA's ``embed_tokens``/``lm_head``,
  or saved embedding layers) **replace** the base tensor; with several adapters the last one wins.
- **vocabulary**: before an adapter is applied, the embedding and LM head grow to that adapter's size (its
  saved embedding rows, else its tokenizer), as the Chinese-LLaMA-Alpaca script calls
  ``resize_token_embeddings(len(tokenizer))``. New rows that no adapter replaces get the mean of the existing
  rows (computed in fp32, cast to the dtype): the centre of transformers' default ``mean_resizing``, which
  samples from N(mean, 1e-9 * covariance) - random, so only its mean is reproducible - and exactly what
  transformers writes when that covariance is not positive definite.
- **no new NaN/Inf**: a merged tensor with NaN or Inf where the base has finite numbers is an error (peft's
  ``safe_merge=True``, on by default; non-finite values the base already had are kept), and so is an
  ``adapter_config.json`` number no trained adapter has (NaN, Infinity, ``r`` 0 or 2.5, ``lora_alpha`` 1e308).

Memory: adapters are opened lazily (headers, mmap); each base tensor is read once, every adapter's delta or
replacement is applied, and it is written; peak ~ a few copies of the largest tensor.

Modules: ``settings`` (adapter_config.json's merge rules), ``adapters`` (every peft layout, indexed against the
base), ``tokenizer`` (``len(tokenizer)`` from files), ``vocab`` (the vocabulary plan and its checks),
``arithmetic`` (delta, one rounding, mean rows), ``finite`` (the NaN/Inf check), ``options`` (``MergeOptions``
and its own checks), ``results`` (``MergeResult``, ``AdapterReport``), ``merge`` (the inputs opened and checked,
the plan on the pipeline, the run).
Entry point: ``run(MergeOptions(...), progress=...)``.
"""

from llmkit.lora.adapters import Adapter, LoraModule
from llmkit.lora.arithmetic import ROUNDING, add_in_fp32, grow_rows, lora_delta
from llmkit.lora.merge import MergePlan, merge_lora, open_merge, plan_merge, run
from llmkit.lora.options import FORMATS, MergeOptions
from llmkit.lora.results import AdapterReport, MergeResult
from llmkit.lora.settings import LoraSettings
from llmkit.lora.tokenizer import has_tokenizer, tokenizer_size
from llmkit.lora.vocab import INPUT_EMBEDDINGS, KNOWN_VOCABS, OUTPUT_HEADS, VocabPlan

__all__ = [
    "FORMATS",
    "INPUT_EMBEDDINGS",
    "KNOWN_VOCABS",
    "OUTPUT_HEADS",
    "ROUNDING",
    "Adapter",
    "AdapterReport",
    "LoraModule",
    "LoraSettings",
    "MergeOptions",
    "MergePlan",
    "MergeResult",
    "VocabPlan",
    "add_in_fp32",
    "grow_rows",
    "has_tokenizer",
    "lora_delta",
    "merge_lora",
    "open_merge",
    "plan_merge",
    "run",
    "tokenizer_size",
]
