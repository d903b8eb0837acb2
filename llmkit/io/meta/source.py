""":class:`MetaSource`: Meta ``consolidated.NN.pth`` shards joined into whole tensors on demand (one
output tensor's slices in memory at a time), registered as the ``meta`` source family. The folder is
checked first (``checks``): ``params.json``, missing shards, shard order.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import read_json
from llmkit.io.core.llama_weights import PathArg, meta_config
from llmkit.io.core.regular import is_special
from llmkit.io.core.source import TensorSource, register_source
from llmkit.io.core.spec import TensorInfo
from llmkit.io.hf.torchzip import TorchFile
from llmkit.io.meta.names import meta_shard_dim
from llmkit.io.meta.params import PARAMS_JSON


class MetaSource(TensorSource):
    """Meta ``consolidated.NN.pth`` shards presented as whole tensors (joined on demand)."""

    def __init__(self, path: Path, folder: Path, shard_files: list[TorchFile]):
        import llmkit.io.meta.checks as checks

        first = shard_files[0]
        paths = [f.path for f in shard_files]
        checks.check_shard_names(paths, folder)
        self.params = self._read_params(folder)
        checks.check_shard_count(paths, first.infos, folder, (self.params or {}).get("dim"))
        for other in shard_files[1:]:
            if set(other.infos) != set(first.infos):
                missing = sorted(set(first.infos) ^ set(other.infos))[:3]
                raise InputError(
                    f"Meta shards disagree on tensor names (e.g. {', '.join(missing)})",
                    path=other.path,
                    hint="all consolidated.NN.pth files must come from one model",
                )
        super().__init__(
            path=path,
            layout="meta-pth",
            files=list(shard_files),
            weight_map=dict.fromkeys(first.infos, first),
            folder=folder,
        )
        self._joined: dict[str, TensorInfo] = {}
        for name, info in first.infos.items():
            dim = meta_shard_dim(name) if len(shard_files) > 1 else None
            shape = list(info.shape)
            if dim is not None:
                shape[dim] = sum(f.infos[name].shape[dim] for f in shard_files)
            self._joined[name] = TensorInfo(name, info.dtype, tuple(shape), path)
        if self.params is not None:
            checks.check_params_against_tensors(self.params, self._joined, folder / PARAMS_JSON)
        settled, split_note = (
            (True, None) if len(paths) == 1 else checks.uneven_split_order(paths, [f.infos for f in shard_files])
        )
        if split_note is not None:
            self.warnings.append(split_note)
        self.shape_facts = checks.shape_facts(self._joined, len(paths))
        # The order of model-parallel shards: settled by the shapes, else by the published hashes (hashed
        # by MetaHFView, which reads every byte anyway), else unverified; inspect reads headers only.
        self.order_note: str | None = None
        if not settled:
            tables = checks.published_tables_for(self.shape_facts)
            self.order_note = (
                checks.order_unverified(len(paths), [])
                if not tables
                else f"inspect reads headers only, so the order of the {len(paths)} shards is not checked "
                f"here: llmkit verify {folder} compares them with the published table "
                f"{tables[0].name} (from-meta, recover and merge-lora check it themselves)"
            )
            self.warnings.append(self.order_note)

    @staticmethod
    def _read_params(folder: Path) -> dict | None:
        from llmkit.io.meta.checks import check_params_types

        p = folder / PARAMS_JSON
        if not (p.is_file() or is_special(p)):  # a FIFO or device is refused by read_json, not taken as absent
            return None
        return check_params_types(read_json(p), p)

    def described_config(
        self, shapes: dict[str, tuple[int, ...]], cfg: dict | None, config_path: PathArg
    ) -> tuple[dict | None, PathArg, str]:
        """A Meta folder is judged by its ``params.json`` (as config keys), whatever config is given."""
        return meta_config(self.params, shapes), (Path(self.folder) / PARAMS_JSON if self.folder else None), PARAMS_JSON

    def info(self, name: str) -> TensorInfo:
        return self._joined[name]

    def get(self, name: str) -> torch.Tensor:
        if name not in self._joined:
            raise InputError(f"no tensor named {name!r}", path=self.path)
        dim = meta_shard_dim(name) if len(self.files) > 1 else None
        if dim is None:
            return self.files[0].get(name)
        joined = torch.cat([f.get(name) for f in self.files], dim=dim)  # a copy: the pieces can go
        for f in self.files:
            f.release(name)
        return joined

    def release(self, name: str) -> None:
        if meta_shard_dim(name) is None or len(self.files) == 1:
            self.files[0].release(name)

    def prefetch(self, name: str) -> None:
        for f in self.files:
            f.prefetch(name)


def _meta(folder: Path, shards: list[Path]) -> TensorSource:
    return MetaSource(folder, folder, [TorchFile(p) for p in shards])


def _open_shard_file(path: Path, key: object = None) -> TensorSource | None:
    """One ``consolidated.NN.pth``: the whole set beside it when there are several."""
    if not re.fullmatch(r"consolidated\.\d+\.pth", path.name):
        return None
    shards = sorted(path.parent.glob("consolidated.*.pth"))
    return _meta(path.parent, shards if len(shards) > 1 else [path])


def _open_shard_folder(folder: Path, key: object = None) -> TensorSource | None:
    shards = sorted(folder.glob("consolidated.*.pth"))
    return _meta(folder, shards) if shards else None


register_source("meta", rank=20, open_file=_open_shard_file, open_folder=_open_shard_folder)
