"""``llmkit download``: a model of the registry (or any repo) from the hub or a mirror, content-verified.

Built on huggingface_hub (``HfApi`` for the file list, ``hf_hub_download`` for the bytes; SPEC.md
section 7), without the client behaviours a user must not inherit:

- every file is verified by content, not size: LFS files against the sha256 the hub announces, small
  files against their git blob sha1, and the registry's published MD5 tables where the model has one;
  a file already present and verified is skipped (nothing transferred); a same-size corruption is
  fetched again; bytes corrupted in transit are refused (nothing under the final name);
- ``--include`` / ``--exclude`` are read as ``hf download`` reads them (``llmkit.hub_filters``: ``name/`` is the
  whole folder), and a filter that selects nothing is an error, not an empty download;
- files are fetched into a locked staging folder beside DIR (``llmkit.hub_staging``: no repo file can collide
  with it) and renamed into place only once verified; the folder is removed when the run ends, Ctrl-C and
  SIGTERM included (every transfer stops at its next chunk), and a folder left by a killed run is emptied by the
  next one;
- a missing, private or gated repo is an error with the hub's hint, never an old folder reported as
  downloaded; a dropped connection is an error naming the file, and a re-run completes;
- repo-supplied names are never trusted as paths: anything that would land outside DIR is refused;
- tokens come the hub's way (``HF_TOKEN`` or ``hf auth login``), never from the command line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from llmkit.errors import InputError
from llmkit.hub_errors import Attempts, hub_error, with_retries
from llmkit.hub_filters import select_paths
from llmkit.hub_staging import Staging, refuse_collisions, staging_dir
from llmkit.hub_transfer import FileOutcome, RemoteFile, fetch_all, fetch_file, file_digest, quiet_client
from llmkit.io.core.destination import check_output_path
from llmkit.pipeline import Check, Notice, ProgressFactory, Result, no_progress
from llmkit.redact import register_secret
from llmkit.units import check_space, free_bytes, human_bytes


@dataclass(frozen=True)
class DownloadOptions:
    """``llmkit download``: ``model`` is a registry name or any ``owner/name`` repo id."""

    model: str
    output: Path | None = None  # default: ./<model name>
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    revision: str | None = None
    endpoint: str | None = None  # default: HF_ENDPOINT, else the hub
    jobs: int = 4
    dry_run: bool = False
    verify: bool = True
    force: bool = False  # fetch again even files that verify


@dataclass
class DownloadResult(Result):
    repo: str
    revision: str
    output: str
    dry_run: bool
    files: list[FileOutcome] = field(default_factory=list)
    bytes_downloaded: int = 0
    total_bytes: int = 0
    free_disk_bytes: int = 0
    next_step: str | None = None
    seconds: float = 0.0


def _resolve(options: DownloadOptions):
    """(repo id, output folder, registry model or None)."""
    from llmkit.registry import MODELS

    model = next((m for m in MODELS if m.name == options.model), None)
    by_repo = next((m for m in MODELS if m.repo_id and m.repo_id == options.model), None)
    if model is None and by_repo is not None:  # a registry repo by its id (options.model): same table and next step
        return options.model, Path(options.output or options.model.split("/")[1]), by_repo
    if model is not None:
        if not model.repo_id:
            raise InputError(
                f"{model.name} is not on the hub ({model.notes or 'obtain it from its publisher'})",
                hint="llmkit models lists what can be downloaded",
            )
        repo = model.repo_id
    elif options.model.count("/") == 1 and all(options.model.split("/")):
        repo = options.model
    else:
        raise InputError(
            f"{options.model!r} is neither a known model nor an owner/name repo id",
            hint=_unknown_model_hint(options.model),
        )
    out = Path(options.output) if options.output is not None else Path(model.name if model else repo.split("/")[1])
    return repo, out, model


def _unknown_model_hint(name: str) -> str:
    """The close known model names (``zhixi-13b`` -> ``zhixi-13b-diff``, ...), and the recipe of that name if any."""
    from llmkit.recipes.book import RECIPES
    from llmkit.registry import close_model_names

    close = close_model_names(name)
    hint = "llmkit models lists the known models"
    if close:
        hint = f"did you mean {' or '.join([', '.join(close[:-1]), close[-1]] if len(close) > 1 else close)}? {hint}"
    if name in RECIPES:
        hint += f"; {name} is a recipe: llmkit recipe run {name}"
    return hint


def _safe_target(out: Path, name: str) -> Path:
    """``out / name`` for a repo-supplied name that stays inside ``out``; anything else is refused."""
    p = PurePosixPath(name)
    if not name or "\\" in name or p.is_absolute() or ".." in p.parts:
        raise InputError(
            f"the repo lists a file named {name!r}, which would be written outside the output "
            "folder; nothing was downloaded",
            path=out,
            hint="this repo is not safe to download",
        )
    target = out.joinpath(*p.parts)
    if os.path.commonpath([os.path.realpath(out), os.path.realpath(target)]) != os.path.realpath(out):
        raise InputError(
            f"the repo file {name!r} would land outside the output folder (a symlink?)",
            path=out,
            hint="remove the symlink from the output folder",
        )
    return target


def _list(repo: str, options: DownloadOptions, endpoint: str) -> tuple[str, list[RemoteFile]]:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.hf_api import RepoFile

    token = get_token()
    register_secret(token)  # never printed, whatever a failure message holds
    api = HfApi(endpoint=endpoint, token=token)
    attempts = Attempts()
    try:
        info = with_retries(lambda: api.model_info(repo, revision=options.revision), attempts)
        attempts = Attempts()  # the client retries the (paginated) tree listing itself
        entries = list(api.list_repo_tree(repo, revision=info.sha, recursive=True))
    except Exception as e:
        raise hub_error(e, repo, endpoint, attempts=attempts) from e
    repo_files = [f for f in entries if isinstance(f, RepoFile)]
    chosen = select_paths(repo, [f.path for f in repo_files], options.include, options.exclude)
    files = []
    for f in repo_files:
        if f.path not in chosen:
            continue
        if f.lfs is not None:
            files.append(RemoteFile(f.path, int(f.lfs.size), "sha256", str(f.lfs.sha256)))
        else:
            files.append(RemoteFile(f.path, int(f.size), "git-sha1", str(f.blob_id)))
    return str(info.sha), files


def _next_step(model, out: Path) -> str | None:
    if model is None:
        return f"llmkit inspect {out}"
    if model.kind == "encrypted":
        return f"llmkit decrypt {out} --key /path/to/LLaMA/7B/consolidated.00.pth -o {out}-decrypted"
    if model.kind == "diff":
        return f"llmkit recover --base /path/to/LLaMA/13B --diff {out} -o {model.tables.get('recovered', 'out')}"
    if model.kind == "lora":
        return f"llmkit merge-lora --base <{model.needs}> --lora {out} -o {out}-merged"
    return f"llmkit inspect {out}"


def download(options: DownloadOptions, *, progress: ProgressFactory | None = None) -> DownloadResult:
    """List, plan, fetch what is missing or wrong, verify, rename into place (see the module docstring)."""
    from llmkit.registry import find_expected

    start = time.perf_counter()
    if options.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {options.jobs}")
    repo, out, model = _resolve(options)
    endpoint = (options.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    check_output_path(out)
    quiet_client()
    revision, remote = _list(repo, options, endpoint)
    targets = {r.path: _safe_target(out, r.path) for r in remote}  # every name checked before any byte
    staging = staging_dir(out)
    refuse_collisions(staging, out, [r.path for r in remote])
    table = model.tables.get("download") if model is not None else None
    result = DownloadResult(
        repo=repo,
        revision=revision,
        output=str(out),
        dry_run=options.dry_run,
        total_bytes=sum(r.size for r in remote),
        next_step=_next_step(model, out),
    )
    todo = _to_fetch(remote, targets, options, result)
    need = sum(r.size for r in todo)
    result.free_disk_bytes = free_bytes(out)
    check_space(out, need, result.free_disk_bytes)
    if options.dry_run:
        result.files += [FileOutcome(r.path, r.size, "would download", r.digest) for r in todo]
        result.notices.append(
            Notice.info(
                f"{len(todo)} file(s) to download ({human_bytes(need)}), {len(remote) - len(todo)} already verified"
            )
        )
        return _ordered_and_timed(result, remote, start)
    if todo:
        with Staging(staging, out) as folders, (progress or no_progress)("downloading", need) as advance:
            result.files += fetch_all(
                todo,
                options.jobs,
                advance,
                lambda i, r, bar: fetch_file(
                    repo, revision, endpoint, r, folders.folder(i), targets[r.path], options.verify, bar
                ),
            )
    result.bytes_downloaded = need
    if table is not None and options.verify:
        _check_table(result, out, table, find_expected)
    return _ordered_and_timed(result, remote, start)


def _to_fetch(
    remote: list[RemoteFile], targets: dict[str, Path], options: DownloadOptions, result: DownloadResult
) -> list[RemoteFile]:
    """The files to fetch: those not already at their target with the right size and (with ``verify``)
    digest; each file kept is added to ``result`` as ``skipped``. ``force`` fetches every file."""
    todo: list[RemoteFile] = []
    for r in remote:
        t = targets[r.path]
        if (
            not options.force
            and t.is_file()
            and t.stat().st_size == r.size
            and (not options.verify or file_digest(t, r.algorithm) == r.digest)
        ):
            result.files.append(
                FileOutcome(r.path, r.size, "skipped", r.digest, r.algorithm if options.verify else None)
            )
        else:
            todo.append(r)
    return todo


def _check_table(result: DownloadResult, out: Path, table: str, find_expected) -> None:
    """The registry's published MD5 table: a match marks the file ``table``-verified, a mismatch warns."""
    from llmkit.hashing import hash_file

    for f in result.files:
        entries = [h for t, h in find_expected(Path(f.path).name, "md5") if t == table]
        if not entries:
            continue
        md5 = hash_file(out / f.path, "md5")
        if md5 in entries:
            f.verified = "table"
            result.checks.append(Check(f.path, "ok", f"md5 {md5} matches table {table}"))
        else:
            result.checks.append(Check(f.path, "mismatch", f"md5 {md5} differs from table {table}"))
            result.notices.append(
                Notice.warning(
                    f"{f.path}: md5 {md5} differs from the published table {table} "
                    "(the repo changed since the model card was written?)"
                )
            )


def _ordered_and_timed(result: DownloadResult, remote: list[RemoteFile], start: float) -> DownloadResult:
    """``result`` with its files in the repo's order, its output (unless a dry run) and the seconds since
    ``start``."""
    order = {r.path: i for i, r in enumerate(remote)}
    result.files.sort(key=lambda f: order[f.path])
    if not result.dry_run:
        result.outputs = [result.output]
    result.seconds = round(time.perf_counter() - start, 3)
    return result
