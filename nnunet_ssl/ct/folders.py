"""Output folders of the data-preparation commands: writable, own entries replaced, side files whole.

``preprocess-ct`` and ``prepare-ssl`` share these rules: an output path that is a file
or cannot be written is refused before any work with one message, replacing an output
removes exactly the entries the command writes (whole, so no file of an earlier run
survives in them) and nothing else the folder holds, and JSON side files are written
atomically so that an interruption leaves the old file or the new one, never half.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from nnunet_ssl.errors import UserError


def writable_folder(path: Path | str, what: str = "output folder") -> Path:
    """Create ``path`` (with its parents) and check that files can be written in it.

    Raises:
        UserError: ``path`` is a file, or the folder cannot be created or written to
            (read-only disk, no permission, a parent that is a file).

    Example:
        >>> writable_folder("nnUNet_raw/Dataset501_NCCT")  # doctest: +SKIP
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; give a folder (a new one is created)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(f"cannot write {what} {path}: {reason}; choose a folder you can write to") from None
    return path


def remove_entries(folder: Path, names: tuple[str, ...]) -> list[str]:
    """Remove the entries ``names`` of ``folder`` (folders with all they hold) and nothing else.

    The temporary file an interrupted :func:`write_json` may have left for one of them
    goes too. A symbolic link is removed, never followed.

    Returns:
        The names of the other entries, which are kept (sorted).

    Example:
        >>> remove_entries(Path("out"), ("imagesTr", "dataset.json"))  # doctest: +SKIP
        ['notes.txt']
    """
    folder = Path(folder)
    own = set(names) | {_tmp_name(n) for n in names}
    for name in sorted(own):
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
    return sorted(e.name for e in folder.iterdir() if e.name not in own)


def check_dataset_id(raw: Path, dataset_id: int, name: str) -> None:
    """Refuse a dataset id that another folder than ``name`` already uses in ``raw`` or nnU-Net's other folders.

    nnU-Net finds a dataset by its id alone, so two folders ``Dataset501_A`` and
    ``Dataset501_B`` make every later command fail.

    Raises:
        UserError: Naming the folder that holds the id.

    Example:
        >>> check_dataset_id(Path("nnUNet_raw"), 501, "Dataset501_NCCT")  # doctest: +SKIP
    """
    roots = [raw] + [Path(os.environ[v]) for v in ("nnUNet_preprocessed", "nnUNet_results") if os.environ.get(v)]
    prefix = f"Dataset{dataset_id:03d}_"
    for root in roots:
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            if entry.is_dir() and entry.name.startswith(prefix) and entry.name != name:
                raise UserError(f"dataset id {dataset_id} is already used by {entry}; choose another id "
                                "(nnU-Net finds datasets by id)")


def _tmp_name(name: str) -> str:
    return f".{name}.tmp"


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file and a rename (atomic on one file system)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(_tmp_name(path.name))
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` when it is missing, cut short or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
