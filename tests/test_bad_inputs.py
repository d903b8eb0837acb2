"""Plausible mistakes are bad input, never an internal error, and no command writes into its inputs.

Part 1 feeds every command a zoo of broken inputs (JSON of the wrong type as config.json / shard index /
adapter_config.json / params.json, a folder where a file is expected and the reverse, a dangling symlink,
a symlink loop; as input and as ``-o``): each must exit 2 with exactly one stderr line, ``error: ...``,
naming the offending path. Part 2 checks that recover, make-diff and merge-lora refuse an output that
is, is inside, contains or links into an input, and leave every input byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from common import EMPTY, one_error_line, tree

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import read_json

# ------------------------------------------------------------------ the zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, lora_work, tiny_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("zoo")
    z = SimpleNamespace(root=root)
    z.base = root / "base"
    shutil.copytree(lora_work / "base", z.base)
    z.tuned = tiny_factory("safetensors", seed=1).path
    z.adapter = root / "adapter"
    shutil.copytree(lora_work / "cute", z.adapter)

    z.cfg_array = root / "cfg-array"  # config.json is valid JSON, but an array
    shutil.copytree(z.base, z.cfg_array)
    (z.cfg_array / "config.json").write_text("[1, 2]\n")
    z.cfg_string = root / "cfg-string"
    shutil.copytree(z.base, z.cfg_string)
    (z.cfg_string / "config.json").write_text('"LlamaForCausalLM"\n')
    z.cfg_value = root / "cfg-value"  # an object, but hidden_size is not a number
    shutil.copytree(z.base, z.cfg_value)
    cfg = json.loads((z.base / "config.json").read_text())
    (z.cfg_value / "config.json").write_text(json.dumps({**cfg, "hidden_size": "sixty-four"}))

    sharded = tiny_factory("safetensors-sharded").path
    z.index_array = root / "index-array"
    shutil.copytree(sharded, z.index_array)
    (z.index_array / "model.safetensors.index.json").write_text("[1, 2]")
    z.index_map_list = root / "index-map-list"  # an object whose weight_map is an array
    shutil.copytree(sharded, z.index_map_list)
    (z.index_map_list / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": [1, 2]}')

    z.adapter_array = root / "adapter-array"
    shutil.copytree(z.adapter, z.adapter_array)
    (z.adapter_array / "adapter_config.json").write_text("[1, 2]")

    z.params_array = root / "params-array"
    shutil.copytree(tiny_factory("meta").path, z.params_array)
    (z.params_array / "params.json").write_text("[1, 2]")

    z.dir_as_file = root / "weights.safetensors"  # a folder named like a weight file
    z.dir_as_file.mkdir()
    z.file = root / "notes.txt"  # a file where a folder is expected
    z.file.write_text("not a model\n")
    z.dangling = root / "dangling"
    z.dangling.symlink_to(root / "nowhere")
    z.loop = root / "loop"
    z.loop.symlink_to(z.loop)

    z.key = root / "key.bin"
    z.key.write_bytes(os.urandom(4096))
    z.enc = root / "enc"
    z.enc.mkdir()
    (z.enc / f"w.dat.{EMPTY}.enc").write_bytes(os.urandom(1000))
    z.plain = root / "plain"
    z.plain.mkdir()
    (z.plain / "w.dat").write_bytes(os.urandom(1000))
    z.table_dir = root / "table.md5"  # a folder where a checksum table file is expected
    z.table_dir.mkdir()

    from llmkit.convert.ckpt import ToCkptOptions, to_ckpt

    (root / "ckpt").mkdir()
    z.ckpt = root / "ckpt" / "model.ckpt"
    to_ckpt(ToCkptOptions(z.base, z.ckpt))
    z.ckpt_cut = root / "ckpt" / "cut.ckpt"
    z.ckpt_cut.write_bytes(z.ckpt.read_bytes()[:1000])
    z.meta = tiny_factory("meta").path
    z.ckpt_key = root / "ckpt" / "ckpt.key"  # a 16-byte AES key file, and a checkpoint encrypted with it
    z.ckpt_key.write_bytes(bytes(range(16)))
    z.wrong_key = root / "ckpt" / "wrong.key"
    z.wrong_key.write_bytes(bytes(range(1, 17)))
    z.short_key = root / "ckpt" / "short.key"
    z.short_key.write_bytes(b"123")
    z.ckpt_enc = root / "ckpt" / "enc.ckpt"
    to_ckpt(ToCkptOptions(z.base, z.ckpt_enc, enc_key=str(z.ckpt_key), enc_mode="AES-GCM"))
    z.ckpt_enc_cut = root / "ckpt" / "enc-cut.ckpt"
    z.ckpt_enc_cut.write_bytes(z.ckpt_enc.read_bytes()[:-100])
    z.manifest_work = root / "recipe-work"  # a recipe work folder whose manifest has the wrong types
    z.manifest_work.mkdir()
    (z.manifest_work / "llmkit-recipe.json").write_text('{"recipe": "cutegpt-13b", "steps": "none"}')
    return z


OUTPUT_CASES = ["file", "file/sub", "dangling", "dangling/sub", "loop", "loop/sub"]


def _output(z: SimpleNamespace, case: str) -> tuple[Path, Path]:
    """(the -o path, the path the message must name) for an unusable output path."""
    first, _, rest = case.partition("/")
    bad = {"file": z.file, "dangling": z.dangling, "loop": z.loop}[first]
    out = bad / rest if rest else bad
    return out, bad


IDX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"


def _o(z: SimpleNamespace) -> Path:
    return z.root / "never-written"


def _enc(z: SimpleNamespace) -> Path:
    return z.enc / f"w.dat.{EMPTY}.enc"


def _recover(z, base, diff):
    return ["recover", "--base", base, "--diff", diff, "-o", _o(z)]


def _make_diff(z, base, target):
    return ["make-diff", "--base", base, "--target", target, "-o", _o(z)]


def _merge(z, base, lora):
    return ["merge-lora", "--base", base, "--lora", lora, "-o", _o(z)]


def _from_ckpt(z, ckpt, *more):
    return ["from-ckpt", ckpt, "-o", _o(z), *more]


def _xor(z, command, inp, key):
    return [command, inp, "--key", key, "--no-key-check", "-o", _o(z)]


# case -> (zoo -> argv, zoo -> the path the error line must name)
INPUT_CASES = {
    "inspect-config-array": (lambda z: ["inspect", z.cfg_array], lambda z: z.cfg_array / "config.json"),
    "inspect-config-string": (lambda z: ["inspect", z.cfg_string], lambda z: z.cfg_string / "config.json"),
    "inspect-index-array": (lambda z: ["inspect", z.index_array], lambda z: z.index_array / IDX),
    "inspect-index-weight-map-array": (lambda z: ["inspect", z.index_map_list], lambda z: z.index_map_list / IDX),
    "inspect-adapter-config-array": (
        lambda z: ["inspect", z.adapter_array],
        lambda z: z.adapter_array / ADAPTER_CONFIG,
    ),
    "inspect-params-array": (lambda z: ["inspect", z.params_array], lambda z: z.params_array / "params.json"),
    "inspect-folder-as-file": (lambda z: ["inspect", z.dir_as_file], lambda z: z.dir_as_file),
    "inspect-file-not-a-model": (lambda z: ["inspect", z.file], lambda z: z.file),
    "inspect-dangling": (lambda z: ["inspect", z.dangling], lambda z: z.dangling),
    "inspect-loop": (lambda z: ["inspect", z.loop], lambda z: z.loop),
    "verify-dangling": (lambda z: ["verify", z.dangling], lambda z: z.dangling),
    "verify-loop": (lambda z: ["verify", z.loop], lambda z: z.loop),
    "verify-table-is-a-folder": (lambda z: ["verify", "--table", z.table_dir, z.base], lambda z: z.table_dir),
    "verify-table-dangling": (lambda z: ["verify", "--table", z.dangling, z.base], lambda z: z.dangling),
    "verify-tensors-index-array": (
        lambda z: ["verify", "--tensors", z.index_array, z.base],
        lambda z: z.index_array / IDX,
    ),
    "verify-tensors-adapter-config-array": (
        lambda z: ["verify", "--tensors", z.adapter_array, z.base],
        lambda z: z.adapter_array / ADAPTER_CONFIG,
    ),
    "verify-tensors-loop": (lambda z: ["verify", "--tensors", z.loop, z.base], lambda z: z.loop),
    "checksum-dangling": (lambda z: ["checksum", z.dangling], lambda z: z.dangling),
    "checksum-loop": (lambda z: ["checksum", z.loop], lambda z: z.loop),
    "checksum-tensors-index-weight-map-array": (
        lambda z: ["checksum", "--tensors", z.index_map_list],
        lambda z: z.index_map_list / IDX,
    ),
    "checksum-tensors-params-array": (
        lambda z: ["checksum", "--tensors", z.params_array],
        lambda z: z.params_array / "params.json",
    ),
    "checksum-tensors-adapter-config-array": (
        lambda z: ["checksum", "--tensors", z.adapter_array],
        lambda z: z.adapter_array / ADAPTER_CONFIG,
    ),
    "recover-config-array": (lambda z: _recover(z, z.base, z.cfg_array), lambda z: z.cfg_array / "config.json"),
    "recover-config-value": (lambda z: _recover(z, z.base, z.cfg_value), lambda z: z.cfg_value / "config.json"),
    "recover-index-array": (lambda z: _recover(z, z.base, z.index_array), lambda z: z.index_array / IDX),
    "recover-adapter-config-array": (
        lambda z: _recover(z, z.base, z.adapter_array),
        lambda z: z.adapter_array / ADAPTER_CONFIG,
    ),
    "recover-file-as-base": (lambda z: _recover(z, z.file, z.tuned), lambda z: z.file),
    "recover-folder-as-file": (lambda z: _recover(z, z.base, z.dir_as_file), lambda z: z.dir_as_file),
    "recover-dangling": (lambda z: _recover(z, z.dangling, z.tuned), lambda z: z.dangling),
    "recover-loop": (lambda z: _recover(z, z.base, z.loop), lambda z: z.loop),
    "make-diff-config-array": (lambda z: _make_diff(z, z.base, z.cfg_array), lambda z: z.cfg_array / "config.json"),
    "make-diff-config-string": (lambda z: _make_diff(z, z.base, z.cfg_string), lambda z: z.cfg_string / "config.json"),
    "make-diff-index-weight-map-array": (
        lambda z: _make_diff(z, z.index_map_list, z.tuned),
        lambda z: z.index_map_list / IDX,
    ),
    "make-diff-adapter-config-array": (
        lambda z: _make_diff(z, z.adapter_array, z.tuned),
        lambda z: z.adapter_array / ADAPTER_CONFIG,
    ),
    "make-diff-folder-as-file": (lambda z: _make_diff(z, z.dir_as_file, z.tuned), lambda z: z.dir_as_file),
    "make-diff-loop": (lambda z: _make_diff(z, z.loop, z.tuned), lambda z: z.loop),
    "make-diff-dangling": (lambda z: _make_diff(z, z.base, z.dangling), lambda z: z.dangling),
    "merge-lora-base-config-array": (
        lambda z: _merge(z, z.cfg_array, z.adapter),
        lambda z: z.cfg_array / "config.json",
    ),
    "merge-lora-base-index-array": (lambda z: _merge(z, z.index_array, z.adapter), lambda z: z.index_array / IDX),
    "merge-lora-adapter-config-array": (
        lambda z: _merge(z, z.base, z.adapter_array),
        lambda z: z.adapter_array / ADAPTER_CONFIG,
    ),
    "merge-lora-file-as-base": (lambda z: _merge(z, z.file, z.adapter), lambda z: z.file),
    "merge-lora-folder-as-base-file": (lambda z: _merge(z, z.dir_as_file, z.adapter), lambda z: z.dir_as_file),
    # a file stands for its folder (adapter_model.safetensors -> the adapter folder), which is then named
    "merge-lora-file-as-adapter": (lambda z: _merge(z, z.base, z.file), lambda z: z.file.parent),
    "merge-lora-dangling-adapter": (lambda z: _merge(z, z.base, z.dangling), lambda z: z.dangling),
    "merge-lora-loop-adapter": (lambda z: _merge(z, z.base, z.loop), lambda z: z.loop),
    "merge-lora-loop-base": (lambda z: _merge(z, z.loop, z.adapter), lambda z: z.loop),
    "decrypt-dangling": (lambda z: _xor(z, "decrypt", z.dangling, z.key), lambda z: z.dangling),
    "decrypt-loop": (lambda z: _xor(z, "decrypt", z.loop, z.key), lambda z: z.loop),
    "decrypt-file-not-enc": (lambda z: _xor(z, "decrypt", z.file, z.key), lambda z: z.file),
    "decrypt-key-is-a-folder": (lambda z: _xor(z, "decrypt", _enc(z), z.enc), lambda z: z.enc),
    "decrypt-key-dangling": (lambda z: _xor(z, "decrypt", _enc(z), z.dangling), lambda z: z.dangling),
    "decrypt-key-loop": (lambda z: _xor(z, "decrypt", _enc(z), z.loop), lambda z: z.loop),
    "encrypt-dangling": (lambda z: _xor(z, "encrypt", z.dangling, z.key), lambda z: z.dangling),
    "encrypt-loop": (lambda z: _xor(z, "encrypt", z.loop, z.key), lambda z: z.loop),
    "encrypt-empty-folder": (lambda z: _xor(z, "encrypt", z.dir_as_file, z.key), lambda z: z.dir_as_file),
    "encrypt-key-is-a-folder": (lambda z: _xor(z, "encrypt", z.plain, z.plain), lambda z: z.plain),
    "to-ckpt-dangling": (lambda z: ["to-ckpt", z.dangling, "-o", _o(z)], lambda z: z.dangling),
    "to-ckpt-loop": (lambda z: ["to-ckpt", z.loop, "-o", _o(z)], lambda z: z.loop),
    "to-ckpt-index-array": (lambda z: ["to-ckpt", z.index_array, "-o", _o(z)], lambda z: z.index_array / IDX),
    "to-ckpt-params-array": (
        lambda z: ["to-ckpt", z.params_array, "-o", _o(z)],
        lambda z: z.params_array / "params.json",
    ),
    "to-ckpt-config-array-rotary-meta": (
        lambda z: ["to-ckpt", z.cfg_array, "-o", _o(z), "--rotary", "meta"],
        lambda z: z.cfg_array / "config.json",
    ),
    "to-ckpt-folder-as-file": (lambda z: ["to-ckpt", z.dir_as_file, "-o", _o(z)], lambda z: z.dir_as_file),
    "to-ckpt-adapter": (lambda z: ["to-ckpt", z.adapter, "-o", _o(z)], lambda z: z.adapter),
    "from-ckpt-dangling": (lambda z: _from_ckpt(z, z.dangling), lambda z: z.dangling),
    "from-ckpt-loop": (lambda z: _from_ckpt(z, z.loop), lambda z: z.loop),
    "from-ckpt-not-a-model": (lambda z: _from_ckpt(z, z.file), lambda z: z.file),
    "from-ckpt-not-a-ckpt": (lambda z: _from_ckpt(z, z.base), lambda z: z.base),
    "from-ckpt-truncated": (lambda z: _from_ckpt(z, z.ckpt_cut), lambda z: z.ckpt_cut),
    "from-ckpt-config-array": (
        lambda z: _from_ckpt(z, z.ckpt, "--config", z.cfg_array),
        lambda z: z.cfg_array / "config.json",
    ),
    "from-ckpt-config-dangling": (lambda z: _from_ckpt(z, z.ckpt, "--config", z.dangling), lambda z: z.dangling),
    "from-ckpt-config-folder-without-config": (lambda z: _from_ckpt(z, z.ckpt, "--config", z.enc), lambda z: z.enc),
    # encrypted checkpoints: no key, a wrong key, a key of the wrong size, a truncated file
    "from-ckpt-encrypted-without-key": (lambda z: _from_ckpt(z, z.ckpt_enc), lambda z: z.ckpt_enc),
    "from-ckpt-encrypted-wrong-key": (
        lambda z: _from_ckpt(z, z.ckpt_enc, "--dec-key", z.wrong_key),
        lambda z: z.ckpt_enc,
    ),
    "from-ckpt-encrypted-short-key": (
        lambda z: _from_ckpt(z, z.ckpt_enc, "--dec-key", z.short_key),
        lambda z: z.short_key,
    ),
    "from-ckpt-encrypted-truncated": (
        lambda z: _from_ckpt(z, z.ckpt_enc_cut, "--dec-key", z.ckpt_key),
        lambda z: z.ckpt_enc_cut,
    ),
    "inspect-encrypted-wrong-key": (lambda z: ["inspect", z.ckpt_enc, "--dec-key", z.wrong_key], lambda z: z.ckpt_enc),
    "checksum-tensors-encrypted-without-key": (lambda z: ["checksum", "--tensors", z.ckpt_enc], lambda z: z.ckpt_enc),
    "verify-tensors-encrypted-wrong-key": (
        lambda z: ["verify", "--tensors", z.ckpt_enc, z.base, "--dec-key", z.wrong_key],
        lambda z: z.ckpt_enc,
    ),
    "to-ckpt-enc-key-dangling": (
        lambda z: ["to-ckpt", z.base, "-o", _o(z), "--enc-key", z.dangling],
        lambda z: z.dangling,
    ),
    "from-meta-params-array": (
        lambda z: ["from-meta", z.params_array, "-o", _o(z)],
        lambda z: z.params_array / "params.json",
    ),
    "from-meta-dangling": (lambda z: ["from-meta", z.dangling, "-o", _o(z)], lambda z: z.dangling),
    "from-meta-loop": (lambda z: ["from-meta", z.loop, "-o", _o(z)], lambda z: z.loop),
    "from-meta-file-not-a-model": (lambda z: ["from-meta", z.file, "-o", _o(z)], lambda z: z.file),
    "from-meta-empty-folder": (lambda z: ["from-meta", z.dir_as_file, "-o", _o(z)], lambda z: z.dir_as_file),
    "to-meta-dangling": (lambda z: ["to-meta", z.dangling, "-o", _o(z)], lambda z: z.dangling),
    "to-meta-index-array": (lambda z: ["to-meta", z.index_array, "-o", _o(z)], lambda z: z.index_array / IDX),
    "to-meta-config-array": (lambda z: ["to-meta", z.cfg_array, "-o", _o(z)], lambda z: z.cfg_array / "config.json"),
    "to-meta-adapter": (lambda z: ["to-meta", z.adapter, "-o", _o(z)], lambda z: z.adapter),
    "recipe-key-dangling": (
        lambda z: ["recipe", "run", "techgpt-1.0", "--workdir", _o(z), "--key", z.dangling],
        lambda z: z.dangling,
    ),
    "recipe-key-is-a-folder": (
        lambda z: ["recipe", "run", "techgpt-1.0", "--workdir", _o(z), "--key", z.enc],
        lambda z: z.enc,
    ),
    "recipe-llama-dir-is-a-file": (
        lambda z: ["recipe", "run", "zhixi-13b", "--workdir", _o(z), "--llama-dir", z.file],
        lambda z: z.file,
    ),
    "recipe-llama-dir-params-array": (
        lambda z: ["recipe", "run", "zhixi-13b", "--workdir", _o(z), "--llama-dir", z.params_array],
        lambda z: z.params_array / "params.json",
    ),
    "recipe-llama-dir-wrong-size": (
        lambda z: ["recipe", "run", "zhixi-13b", "--workdir", _o(z), "--llama-dir", z.meta],
        lambda z: z.meta / "params.json",
    ),
    # the manifest is read before the hub is asked anything (no request leaves the machine)
    "recipe-manifest-wrong-types": (
        lambda z: [
            "recipe",
            "run",
            "cutegpt-13b",
            "--workdir",
            z.manifest_work,
            "--endpoint",
            "http://127.0.0.1:9",
            "--dry-run",
        ],
        lambda z: z.manifest_work / "llmkit-recipe.json",
    ),
    "demo-workdir-is-a-file": (lambda z: ["demo", "--workdir", z.file], lambda z: z.file),
    "download-output-is-a-file": (lambda z: ["download", "techgpt-7b", "-o", z.file, "--dry-run"], lambda z: z.file),
    "download-output-loop": (lambda z: ["download", "techgpt-7b", "-o", z.loop / "x", "--dry-run"], lambda z: z.loop),
}


def test_the_zoo_feeds_every_command(zoo):
    """Every command that reads a path (``models`` reads none) has bad-input cases."""
    commands = {argv(zoo)[0] for argv, _ in INPUT_CASES.values()}
    assert commands == {
        "inspect",
        "verify",
        "checksum",
        "recover",
        "make-diff",
        "merge-lora",
        "decrypt",
        "encrypt",
        "to-ckpt",
        "from-ckpt",
        "from-meta",
        "to-meta",
        "recipe",
        "demo",
        "download",
    }


@pytest.mark.parametrize("case", sorted(INPUT_CASES))
def test_bad_input_is_one_error_line_naming_the_path(run_cli, zoo, case):
    argv, named = INPUT_CASES[case]
    before = tree(zoo.root)
    one_error_line(run_cli(*argv(zoo)), named(zoo))
    assert tree(zoo.root) == before  # nothing was created, not even an empty output folder


WRITERS = {
    "recover": lambda z, o: ["recover", "--base", z.base, "--diff", z.tuned, "-o", o],
    "make-diff": lambda z, o: ["make-diff", "--base", z.base, "--target", z.tuned, "-o", o],
    "merge-lora": lambda z, o: ["merge-lora", "--base", z.base, "--lora", z.adapter, "-o", o],
    "decrypt": lambda z, o: ["decrypt", z.enc, "--key", z.key, "--no-key-check", "--no-content-check", "-o", o],
    "encrypt": lambda z, o: ["encrypt", z.plain, "--key", z.key, "--no-key-check", "-o", o],
    "to-ckpt": lambda z, o: ["to-ckpt", z.base, "-o", o],  # -o is the .ckpt file itself
    "from-meta": lambda z, o: ["from-meta", z.meta, "-o", o],
    "to-meta": lambda z, o: ["to-meta", z.base, "-o", o],
    "from-ckpt": lambda z, o: ["from-ckpt", z.ckpt, "-o", o, "--config", z.base],
}


@pytest.mark.parametrize("case", OUTPUT_CASES)
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_unusable_output_path_is_one_error_line_saying_what_it_is(run_cli, zoo, command, case):
    out, bad = _output(zoo, case)
    before = tree(zoo.root)
    line = one_error_line(run_cli(*WRITERS[command](zoo, out)), bad)
    what = {
        "file": "not a folder" if case == "file" else "is a file",
        "dangling": "dangling symlink to",
        "loop": "symlink loop",
    }[case.split("/")[0]]
    if command == "to-ckpt" and case == "file":  # a file output: an existing file needs --force
        what = "output file exists"
    assert what in line, line
    if case.startswith("dangling"):
        assert str(zoo.root / "nowhere") in line  # says where the link points
    assert tree(zoo.root) == before  # in particular the link's target was not created
    assert not (zoo.root / "nowhere").exists()


# ------------------------------------------------------------------ the shared JSON reader


@pytest.mark.parametrize(
    "text,kind",
    [("[1, 2]", "an array"), ('"x"', "a string"), ("null", "null"), ("3", "a number"), ("true", "the value true")],
)
def test_read_json_refuses_valid_json_of_the_wrong_type(tmp_path, text, kind):
    p = tmp_path / "config.json"
    p.write_text(text)
    with pytest.raises(InputError) as err:
        read_json(p)
    assert err.value.path == str(p)
    assert err.value.message == f"config.json must hold a JSON object, found {kind}"


def test_read_json_names_the_file_for_damage_folders_and_links(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,')
    folder = tmp_path / "folder.json"
    folder.mkdir()
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "gone.json")
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    expected = {
        bad: "is not valid JSON",
        folder: "is a folder, not a file",
        dangling: f"is a dangling symlink (to {tmp_path / 'gone.json'})",
        loop: "is a symlink loop",
    }
    for path, words in expected.items():
        with pytest.raises(InputError) as err:
            read_json(path)
        assert err.value.path == str(path) and words in err.value.message, err.value
    ok = tmp_path / "ok.json"
    ok.write_bytes(b'\xef\xbb\xbf{"a": [1]}')  # a UTF-8 BOM is accepted, as transformers writes some files
    assert read_json(ok) == {"a": [1]}


def test_inspect_reports_a_wrong_config_value_as_a_warning_not_a_crash(run_cli, zoo):
    r = run_cli("inspect", zoo.cfg_value, "--json")
    assert r.exit_code == 0, r.stderr
    assert "hidden_size must be a positive integer" in r.stderr and str(zoo.cfg_value / "config.json") in r.stderr
    data = r.json()
    assert data["hidden_size"] == 64  # from the embedding's shape, not from the broken config value


# ------------------------------------------------------------------ outputs inside inputs


@pytest.fixture
def inputs(tmp_path, lora_work, tiny_factory) -> SimpleNamespace:
    """Private copies of every input under ``tmp/in`` (so a failure cannot spoil shared fixtures)."""
    root = tmp_path / "in"
    s = SimpleNamespace(root=root, tmp=tmp_path)
    s.base = root / "base"
    shutil.copytree(lora_work / "base", s.base)
    s.tuned = root / "tuned"
    shutil.copytree(tiny_factory("safetensors", seed=1).path, s.tuned)
    s.adapter = root / "adapter"
    shutil.copytree(lora_work / "cute", s.adapter)
    s.tokenizer = root / "tokenizer"
    s.tokenizer.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(lora_work / "base" / name, s.tokenizer / name)
    return s


JOBS = {
    "recover": lambda s, o: ["recover", "--base", s.base, "--diff", s.tuned, "-o", o],
    "make-diff": lambda s, o: ["make-diff", "--base", s.base, "--target", s.tuned, "-o", o],
    "merge-lora": lambda s, o: [
        "merge-lora",
        "--base",
        s.base,
        "--lora",
        s.adapter,
        "--tokenizer",
        s.tokenizer,
        "-o",
        o,
    ],
}
# The inputs each job reads, by role; every one is tried as the victim.
ROLES = {"recover": ["base", "tuned"], "make-diff": ["base", "tuned"], "merge-lora": ["base", "adapter", "tokenizer"]}
PLACES = ["equal", "inside", "parent", "link-to-input", "inside-link-to-input"]


def _place(s: SimpleNamespace, victim: Path, place: str) -> tuple[Path, str]:
    """(the -o path, the words the refusal must contain)."""
    if place == "equal":
        return victim, "is an input folder"
    if place == "inside":
        return victim / "sub", "is inside the input folder"
    if place == "parent":
        return s.root, "contains the input folder"
    link = s.tmp / "link"
    link.symlink_to(victim)
    if place == "link-to-input":
        return link, "is an input folder"
    return link / "sub" / "deeper", "is inside the input folder"


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("job,role", [(j, r) for j in sorted(JOBS) for r in ROLES[j]])
def test_output_in_or_around_an_input_is_refused_and_inputs_are_unchanged(run_cli, inputs, job, role, place):
    victim = getattr(inputs, role)
    out, words = _place(inputs, victim, place)
    before = tree(inputs.root)
    line = one_error_line(run_cli(*JOBS[job](inputs, out)), out)
    assert words in line, line
    assert tree(inputs.root) == before  # no file, no subfolder, no byte changed


@pytest.mark.parametrize("job", ["recover", "make-diff", "merge-lora"])
def test_a_weight_file_input_makes_its_folder_an_input(run_cli, inputs, job):
    """``--base base/model.safetensors -o base/sub``: config and tokenizer are read from ``base``."""
    args = JOBS[job](inputs, inputs.base / "sub")
    args[args.index("--base") + 1] = inputs.base / "model.safetensors"
    before = tree(inputs.root)
    line = one_error_line(run_cli(*args), inputs.base / "sub")
    assert f"is inside the input folder {inputs.base}" in line, line
    assert tree(inputs.root) == before


@pytest.mark.parametrize("job", sorted(JOBS))
def test_an_output_beside_the_inputs_is_still_accepted(run_cli, inputs, job):
    out = inputs.tmp / "out"
    before = tree(inputs.root)
    r = run_cli(*JOBS[job](inputs, out), "--quiet")
    assert r.exit_code == 0, r.stderr
    assert (out / "model.safetensors").is_file()
    assert tree(inputs.root) == before
