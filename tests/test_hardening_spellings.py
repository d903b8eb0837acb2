"""Spellings users bring from hf / transformers, llama.cpp and mergekit: accepted where they mean one thing,
refused with one line naming the flag where they do not; typos get the closest option; a model name used
as a path, an unknown model name and a folder of encrypted files each say what to run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from common import one_error_line, record_options

import llmkit.convert as convert
import llmkit.convert.ckpt as ckpt_job
import llmkit.lora as lora_lib
import llmkit.recover as recover_lib
from llmkit.errors import InputError
from llmkit.units import parse_size


@pytest.fixture
def calls(monkeypatch):
    return record_options(
        monkeypatch,
        (recover_lib, "run"),
        (lora_lib, "run"),
        (convert, "from_meta"),
        (convert, "to_meta"),
        (ckpt_job, "to_ckpt"),
        (ckpt_job, "from_ckpt"),
    )


# Every command with --dtype, as a command line without the --dtype value.
DTYPE_COMMANDS = {
    "recover": ["recover", "--base", "b", "--diff", "d", "-o", "o"],
    "make-diff": ["make-diff", "--base", "b", "--target", "t", "-o", "o"],
    "merge-lora": ["merge-lora", "--base", "b", "--lora", "l", "-o", "o"],
    "from-meta": ["from-meta", "m", "-o", "o"],
    "to-meta": ["to-meta", "m", "-o", "o"],
    "to-ckpt": ["to-ckpt", "m", "-o", "o.ckpt"],
    "from-ckpt": ["from-ckpt", "m.ckpt", "-o", "o"],
}
# The spellings of transformers/torch (float16, half, bfloat16, float32, float), llama.cpp (f16, f32, bf16) and
# mergekit (float16, bfloat16), as the names llmkit writes in its options (fp16, bf16, fp32).
SPELLINGS = {
    "f16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "FP16": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "f32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "fp32": "fp32",
}


@pytest.mark.parametrize("command", sorted(DTYPE_COMMANDS))
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_dtype_spellings_of_hf_llama_cpp_and_mergekit_are_accepted(run_cli, calls, command, spelling):
    expected = SPELLINGS[spelling]
    r = run_cli(*DTYPE_COMMANDS[command], "--dtype", spelling)
    if command == "make-diff" and expected == "bf16":  # a diff is fp32 or fp16
        line = one_error_line(r, "--dtype", spelling)
        assert "fp32" in line and "fp16" in line and calls == []
        return
    assert r.exit_code == 0, r.stderr
    assert [c.dtype for c in calls] == [expected]


@pytest.mark.parametrize("command", sorted(DTYPE_COMMANDS))
def test_an_unknown_dtype_is_one_line_naming_the_flag(run_cli, calls, command):
    line = one_error_line(run_cli(*DTYPE_COMMANDS[command], "--dtype", "f8"), "--dtype", "f8", "fp16")
    assert line.startswith("error: --dtype: ") and calls == []


@pytest.mark.parametrize(
    "text,value",
    [
        ("5G", 5 * 10**9),
        ("5GB", 5 * 10**9),
        ("5gb", 5 * 10**9),
        ("500M", 500 * 10**6),
        ("500MB", 500 * 10**6),
        ("2GiB", 2 * 2**30),
        ("2Gi", 2 * 2**30),
        ("2gib", 2 * 2**30),
        ("1.5G", 1_500_000_000),
        ("100K", 100_000),
        ("512MiB", 512 * 2**20),
        ("1T", 10**12),
        ("1000", 1000),
        ("4096B", 4096),
    ],
)
def test_shard_sizes_as_transformers_and_llama_cpp_write_them(text, value):
    """G/GB = 10^9 (transformers' "5GB", llama.cpp's --split-max-size 5G); Gi/GiB = 2^30."""
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["5B", "lots", "5X", "-1G", "0", "5 G B", "G"])
def test_sizes_that_mean_nothing_or_two_things_are_refused(text):
    with pytest.raises(InputError):  # "5B" is 5 bytes here but 5 billion in mergekit: refused, not guessed
        parse_size(text)


@pytest.mark.parametrize("command", ["recover", "make-diff", "merge-lora", "from-meta", "to-ckpt", "from-ckpt"])
def test_shard_size_5G_reaches_the_options_and_a_bad_one_names_the_flag(run_cli, calls, command):
    r = run_cli(*DTYPE_COMMANDS[command], "--shard-size", "5G")
    assert r.exit_code == 0, r.stderr
    assert [c.shard_size for c in calls] == [5 * 10**9]
    line = one_error_line(run_cli(*DTYPE_COMMANDS[command], "--shard-size", "5X"), "--shard-size", "5X")
    assert line.startswith("error: --shard-size: ") and "5GB" in line and len(calls) == 1


@pytest.mark.parametrize(
    "argv,typo,meant",
    [
        (DTYPE_COMMANDS["recover"], "--outfile", "--output"),
        (DTYPE_COMMANDS["to-ckpt"], "--outfile", "--output"),
        (["decrypt", "x.enc", "-k", "k"], "--outfile", "--output"),
        (DTYPE_COMMANDS["to-ckpt"], "--outtype", "--dtype"),
        (DTYPE_COMMANDS["merge-lora"], "--out-shard-size", "--shard-size"),
        (DTYPE_COMMANDS["recover"], "--max-shard-size", "--shard-size"),
        (DTYPE_COMMANDS["recover"], "--dtpye", "--dtype"),
        (DTYPE_COMMANDS["recover"], "--bsae", "--base"),
        (["download", "zhixi-13b-diff"], "--local-dir", "--output"),
        (["verify", "."], "--jbos", "--jobs"),
    ],
)
def test_a_flag_typo_suggests_the_closest_option(run_cli, calls, argv, typo, meant):
    line = one_error_line(run_cli(*argv, typo, "x"), typo)
    assert f"did you mean {meant}" in line, line
    assert "--quiet" not in line and calls == []


def test_a_typo_far_from_every_option_suggests_nothing(run_cli, calls):
    line = one_error_line(run_cli(*DTYPE_COMMANDS["recover"], "--zzzzzzzz"), "--zzzzzzzz")
    assert "did you mean" not in line


@pytest.fixture
def empty_cwd(tmp_path):
    old = Path.cwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


@pytest.mark.parametrize(
    "argv,name",
    [
        (["merge-lora", "--base", "BASE", "--lora", "chinese-alpaca-lora-7b", "-o", "out"], "chinese-alpaca-lora-7b"),
        (["verify", "zhixi-13b-diff"], "zhixi-13b-diff"),
        (["inspect", "TechGPT-2.0-atom-hf"], "techgpt-2.0-atom"),  # the folder a download by repo id makes
    ],
)
def test_a_model_name_used_as_a_missing_path_says_how_to_download_it(run_cli, empty_cwd, tiny_factory, argv, name):
    base = str(tiny_factory().path)  # a real base: the missing path is the model name
    line = one_error_line(run_cli(*[base if a == "BASE" else a for a in argv]), "no such ", f"llmkit download {name}")
    assert " -o " not in line.split("llmkit download")[1] or argv[-1] == "TechGPT-2.0-atom-hf"
    assert list(empty_cwd.iterdir()) == []  # nothing was created


@pytest.mark.parametrize(
    "argv,name,repo",
    [
        (["to-ckpt", "techgpt-2.0-atom", "-o", "x.ckpt"], "techgpt-2.0-atom", "neukg/TechGPT-2.0-atom-hf"),
        (["inspect", "zhixi-13b-diff"], "zhixi-13b-diff", "zjunlp/zhixi-13b-diff"),
        (["decrypt", "techgpt-7b", "-k", "KEY", "-o", "out"], "techgpt-7b", "neukg/TechGPT-7B"),
        (
            ["recover", "--base", "BASE", "--diff", "zhixi-13b-diff", "-o", "out"],
            "zhixi-13b-diff",
            "zjunlp/zhixi-13b-diff",
        ),
    ],
)
def test_a_model_name_that_is_no_local_path_is_read_from_its_hub_repo(
    run_cli, empty_cwd, tiny_factory, monkeypatch, argv, name, repo
):
    """A registry name where a model is read is its hub repo (hf://); with the hub out of reach (a closed local
    port here), one line names the URL tried and the way to download it instead."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    base = str(tiny_factory().path)
    key = f"{base}/config.json"  # a key file that exists: the hub is what fails
    line = one_error_line(
        run_cli(*[{"BASE": base, "KEY": key}.get(a, a) for a in argv]), f"hf://{repo}", f"llmkit download {name}"
    )
    assert "cannot reach http://127.0.0.1:9" in line, line  # the endpoint HF_ENDPOINT names, nothing else
    assert list(empty_cwd.iterdir()) == []  # nothing was created


def test_a_model_name_in_another_folder_gets_the_download_hint_with_that_folder(run_cli, empty_cwd):
    line = one_error_line(run_cli("inspect", "models/techgpt-2.0-atom"), "no such file")
    assert "llmkit download techgpt-2.0-atom -o models/techgpt-2.0-atom" in line, line


def test_a_missing_path_that_is_no_model_name_gets_no_download_hint(run_cli, empty_cwd):
    line = one_error_line(run_cli("inspect", "my-model"), "my-model", "no such file")
    assert "llmkit download" not in line


def test_an_unknown_model_name_suggests_the_close_registry_names(run_cli, empty_cwd):
    line = one_error_line(run_cli("download", "zhixi-13b", "--dry-run"), "zhixi-13b")
    assert "did you mean zhixi-13b-diff" in line, line
    assert list(empty_cwd.iterdir()) == []


def test_inspect_of_a_folder_of_enc_files_points_to_decrypt(run_cli, tmp_path):
    folder = tmp_path / "techgpt-7b"
    folder.mkdir()
    for name in ("pytorch_model.bin", "config.json"):
        (folder / f"{name}.e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.enc").write_bytes(b"x")
    line = one_error_line(run_cli("inspect", folder), folder, "no weight files", "llmkit decrypt")
    assert "2 .enc" in line, line
