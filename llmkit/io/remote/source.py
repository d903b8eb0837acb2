"""A remote model as a tensor source: ``hf://...``, ``s3://...`` or ``https://...`` read without a local copy.

:func:`open_remote` lists the location (``store``), fetches the small files (config, tokenizer, shard
index, adapter config: each checked against the store's digest) into a private temporary folder that is
the source's ``folder`` (removed on close), and reads each weight file's metadata by ranged requests
(``files``: a safetensors header; a torch zip's directory and pickle). Tensor data is then read front to back once per file (``reader.VerifiedReader``: fetched ahead,
hashed as it arrives, the digest judged when the job reads the file to its end, before the output is
made final; a file whose store publishes no digest is read unverified, and every weight file's
``integrity_warning`` says so for the source). Tensors are listed as a local folder of the same files lists them; the runner reads them in
file order (``stream_position``), so every byte is fetched once. Layouts: a ``*.safetensors`` or ``.bin``
file; a folder with ``model.safetensors``, ``adapter_model.safetensors``, ``pytorch_model.bin``,
``adapter_model.bin`` or one loose weight file; shards with ``model.safetensors.index.json`` or
``pytorch_model.bin.index.json``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.source import TensorFile, TensorSource
from llmkit.io.hf.adapter_config import ADAPTER_CONFIG, AdapterInfo
from llmkit.io.hf.names import BIN_INDEX, SAFETENSORS_INDEX
from llmkit.io.remote.files import RemoteSafetensorsFile, RemoteTorchFile
from llmkit.io.remote.ranged import check_listed, ranged
from llmkit.io.remote.reader import read_verified
from llmkit.io.remote.store import RemoteEntry, Store, open_store
from llmkit.io.remote.url import as_remote_path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".gguf", ".enc", ".zip", ".tar", ".h5", ".msgpack")
SIDE_FILE_MAX = 64 * 2**20  # bytes: a larger non-weight file is not fetched (it is no config or tokenizer)
_POSITION_STRIDE = 1 << 40  # stream positions: file rank * stride + place in the file
RemoteFile = RemoteSafetensorsFile | RemoteTorchFile


class RemoteSource(TensorSource):
    """The tensors of remote weight files, read in file order; side files in a private ``folder``."""

    remote_files: list[RemoteFile]
    store: Store
    holds_skipped = True  # read in any order: what is passed is held (read_order.check_read_order)
    ranged = False  # --ray: tensors read by ranged requests; read_to_end reads each file whole to judge it

    def stream_position(self, name: str) -> int | None:
        f = self.weight_map[name]
        assert isinstance(f, (RemoteSafetensorsFile, RemoteTorchFile))
        index = f.index(name)
        return None if index is None else self.remote_files.index(f) * _POSITION_STRIDE + index

    def read_to_end(self) -> None:
        """Fetch what no job needed and judge each file's digest (an error keeps no output)."""
        for f in self.remote_files:
            f.read_to_end()

    def close(self) -> None:
        super().close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _is_weight(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def _fetch_side_files(store: Store, entries: dict[str, RemoteEntry], folder: Path) -> list[str]:
    """Fetch the small non-weight files into ``folder``; their names."""
    fetched = []
    for name, e in entries.items():
        if _is_weight(name) or e.size > SIDE_FILE_MAX or name.startswith("."):
            continue
        with open(folder / name, "xb") as f:
            f.write(read_verified(store, e))
        fetched.append(name)
    return fetched


def _weight_names(store: Store, entries: dict[str, RemoteEntry], folder: Path) -> tuple[list[str], str]:
    """The weight files to read, in order, and the layout."""
    from llmkit.io.hf.source import _weight_map

    for index, layout in ((SAFETENSORS_INDEX, "safetensors-sharded"), (BIN_INDEX, "bin-sharded")):
        if (folder / index).is_file():
            names = list(dict.fromkeys(_weight_map(folder / index).values()))
            missing = [n for n in names if n not in entries]
            if missing:
                raise InputError(
                    f"index names {len(missing)} missing shard(s): {', '.join(missing)}", path=store.root / index
                )
            return names, layout
    for name in ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin"):
        if name in entries:
            return [name], "safetensors" if name.endswith(".safetensors") else "bin"
    for ext, layout in ((".safetensors", "safetensors"), (".bin", "bin"), (".pth", "bin")):
        singles = sorted(n for n in entries if n.endswith(ext))
        if len(singles) == 1:
            return singles, layout
        if singles:
            raise InputError(f"{len(singles)} {ext} weight files but no index file", path=store.root)
    raise InputError("no safetensors or PyTorch weights here", path=store.root, hint="check the URL")


def _check_shards(files: list[RemoteFile], names: list[str], index: Path) -> None:
    from llmkit.io.hf.source import _check_shard, _weight_map

    weight_map = _weight_map(index)
    for f, n in zip(files, names, strict=True):
        _check_shard(f, n, weight_map)


def open_remote(url: str) -> RemoteSource:
    """The model (or adapter, or one file) at ``url``: listed, side files fetched, headers read; no tensor data."""
    store = open_store(url)
    entries = store.entries()
    folder = Path(tempfile.mkdtemp(prefix="llmkit-remote-"))
    files: list[RemoteFile] = []
    try:
        side = _fetch_side_files(store, entries, folder)
        names, layout = _weight_names(store, entries, folder)
        by_range = ranged()
        if by_range:
            check_listed(store.url, entries, names)
        for n in names:
            kind = RemoteSafetensorsFile if n.endswith(".safetensors") else RemoteTorchFile
            files.append(kind(store, entries[n], store.root / n))
            if by_range:
                (files[-1].raw if isinstance(files[-1], RemoteTorchFile) else files[-1]).read_by_range(store)
        unverified = store.unverified_line(names + side)  # no digest published (plain https://)
        for f in files:
            f.unverified = unverified
        index = folder / (SAFETENSORS_INDEX if layout == "safetensors-sharded" else BIN_INDEX)
        if layout.endswith("-sharded"):
            _check_shards(files, names, index)
        ordered: dict[str, TensorFile] = {}
        for f in files:
            for k in f.infos:
                ordered[k] = f
        adapter = AdapterInfo.read(folder / ADAPTER_CONFIG) if (folder / ADAPTER_CONFIG).is_file() else None
        src = RemoteSource(
            path=as_remote_path(url),
            layout=layout,
            files=list(files),
            weight_map=ordered,
            folder=folder,
            adapter=adapter,
            index=index if layout.endswith("-sharded") else None,
        )
    except BaseException:
        for f in files:
            f.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    src.remote_files, src.store, src.ranged = files, store, by_range
    return src
