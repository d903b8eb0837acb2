"""What the remote stages share (``sink.S3Staging``, ``hub_sink.HubStaging``): the target URL, what the
writer decides about existing names, and the one rule for an existing output (refused without ``--force``,
replaced with it; the user's other files kept)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from llmkit.errors import OutputExistsError
from llmkit.io.core.staging import ExistingFolder
from llmkit.io.remote.url import RemotePath, as_remote_path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RemoteStage:
    """The target of a remote output and what becomes of the names already there.

    ``one_file``: the URL names the one file of the output (a ``.ckpt``, a ``.gguf``), else a folder;
    ``writes(name)``/``owned(name)``: the writer's names and its layout's (replaced with ``--force``).
    """

    remote = True

    def __init__(
        self,
        url: str,
        *,
        one_file: bool,
        writes: Callable[[str], bool],
        owned: Callable[[str], bool],
        force: bool,
    ):
        self.url = url.rstrip("/")
        self.target: Path = as_remote_path(self.url)
        self.one_file, self.writes, self.owned, self.force = one_file, writes, owned, force
        self.kept: list[str] = []
        self.replaced: list[str] = []

    def path(self, name: str) -> Path:
        return self.target if self.one_file else RemotePath(self.target, name)

    def sort_existing(self, names: Iterable[str], *, folder_word: str = "folder") -> ExistingFolder:
        """What the output's existing ``names`` become; raises if this run may not replace them."""
        found = ExistingFolder()
        clash: list[str] = []
        for name in sorted(names):
            if self.one_file or self.writes(name) or self.owned(name):
                (found.replaced if self.force else clash).append(name)
            else:
                found.kept.append(name)
        if clash:
            what = "output exists" if self.one_file else f"output {folder_word} already holds {', '.join(clash[:3])}"
            raise OutputExistsError(what, path=self.url, hint="pass --force to overwrite, or choose another -o")
        return found
