"""The shipped sha256 tables: Chinese-LLaMA-Alpaca's SHA256.md (commit ee21f26), one table file per
model, in the md5sum format of the other tables. Expected rows are copied here from the published list."""

from __future__ import annotations

from pathlib import Path

from llmkit.registry import builtin_tables, described_tables, find_expected, load_table

REPO = Path(__file__).resolve().parents[1]
SHA256_TABLES = sorted((REPO / "llmkit" / "checksums").glob("*.sha256"))

# Table name -> number of files, as SHA256.md lists them (TBA rows left out).
ROWS = {
    "llama-7b-original": 1,
    "llama-13b-original": 2,
    "llama-33b-original": 4,
    "llama-7b-hf": 2,
    "llama-13b-hf": 3,
    "llama-33b-hf": 7,
    "chinese-llama-tokenizer": 1,
    "chinese-alpaca-tokenizer": 1,
    **{
        f"chinese-{n}-lora-{s}": 1
        for n in ("llama", "llama-plus", "alpaca", "alpaca-plus")
        for s in ("7b", "13b", "33b")
    },
    **{f"chinese-alpaca-pro-lora-{s}": 1 for s in ("7b", "13b", "33b")},
    "chinese-llama-7b-merged": 1,
    "chinese-llama-plus-7b-merged": 1,
    "chinese-llama-13b-merged": 2,
    "chinese-llama-plus-13b-merged": 2,
    "chinese-llama-33b-merged": 4,
    "chinese-llama-plus-33b-merged": 4,
    "chinese-alpaca-7b-merged": 1,
    "chinese-alpaca-plus-7b-merged": 1,
    "chinese-alpaca-13b-merged": 2,
    "chinese-alpaca-plus-13b-merged": 2,
    "chinese-alpaca-33b-merged": 4,
}


def test_the_shipped_sha256_tables_are_chinese_llama_alpacas_list_row_for_row():
    tables = {t.name: t for t in map(load_table, SHA256_TABLES)}
    assert {n: len(t.entries) for n, t in tables.items()} == ROWS
    assert all(t.algorithm == "sha256" and "Chinese-LLaMA-Alpaca's SHA256.md" in t.source for t in tables.values())
    assert sum(ROWS.values()) == 60  # every digest of the list: 7 original, 12 HF, 2 tokenizers, 15 LoRA, 24 merged


def test_the_shipped_sha256_tables_hold_the_published_digests():
    t = builtin_tables()
    assert [(e.rel, e.digest) for e in t["llama-13b-original"].entries] == [
        ("consolidated.00.pth", "745bf4e29a4dd6f411e72976d92b452da1b49168a4f41c951cfcc8051823cf08"),
        ("consolidated.01.pth", "d5ccbcc465c71c0de439a5aeffebe8344c68a519bce70bc7f9f92654ee567085"),
    ]
    assert (
        t["llama-7b-original"].entries[0].digest == "700df0d3013b703a806d2ae7f1bfb8e59814e3d06ae78be0c66368a50059f33d"
    )
    assert t["llama-33b-hf"].entries[-1].rel == "pytorch_model-00007-of-00007.bin"
    assert t["llama-33b-hf"].entries[-1].digest == "065611608159615ced8d38473ee693129a1a0d872ced0ad8daf09290af7c7061"
    assert t["chinese-alpaca-plus-lora-13b"].entries[0].rel == "adapter_model.bin"
    assert t["chinese-alpaca-plus-lora-13b"].entries[0].digest == (
        "a1fcdcb6d7e1068f925fb36ec78632c76058ba12ba352bed4d44060b8e6f4706"
    )
    assert t["chinese-alpaca-33b-merged"].entries[3].digest == (
        "99c81a7a310802dcc579fe96288fbc18d4486f92020eaf925e1c33db8311378a"
    )


def test_the_two_tokenizer_hashes_tell_49953_from_49954():
    found = {t.name: (facts["vocab"], t.entries[0].digest) for t, facts in described_tables("tokenizer")}
    assert found == {
        "chinese-llama-tokenizer": (49953, "e2676d4ca29ca1750f6ff203328d73b189321dc5776ceede037cbd36541d70c0"),
        "chinese-alpaca-tokenizer": (49954, "2d967e855b1213a439df6c8ce2791f869c84b4f3b6cfacf22b86440b8192a2f8"),
    }
    assert len(find_expected("tokenizer.model", "sha256")) == 2


def test_meta_tables_describe_the_shapes_of_their_model():
    facts = {t.name: f for t, f in described_tables("meta-pth")}
    assert facts["llama-13b-original"] == {"dim": 5120, "vocab": 32000, "layers": 40, "shards": 2}
    assert facts["llama-33b-original"] == {"dim": 6656, "vocab": 32000, "layers": 60, "shards": 4}
    assert facts["chinese-llama-plus-13b-merged"] == {"dim": 5120, "vocab": 49953, "layers": 40, "shards": 2}
    assert facts["chinese-alpaca-33b-merged"] == {"dim": 6656, "vocab": 49954, "layers": 60, "shards": 4}
    assert all(f["shards"] == len(builtin_tables()[n].entries) for n, f in facts.items())
