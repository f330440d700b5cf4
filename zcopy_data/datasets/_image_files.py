"""Finding the images of a class-subfolder tree (``root/<class>/**/<file>``), the torchvision layout.

Classes are the sorted names of the folders directly under ``root``; files are found recursively
and sorted, so every process and every run sees the same order. A symbolic link (file or folder)
that resolves outside ``root``, or into another class's folder (its images would be served again
under the wrong label), is not followed unless asked; a link to ``root`` or above it never is. Only
regular files are kept: reading a FIFO, socket or device named ``x.png`` can block forever. What is
left out is listed and logged, never dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field

__all__ = ["IMG_EXTENSIONS", "FolderScan", "not_regular", "scan_folder"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_log = logging.getLogger("zcopy_data")


@dataclass
class FolderScan:
    """What a scan found: classes, files with their labels, and what it left out and why."""

    classes: list[str]
    files: list[str]
    labels: list[int]
    excluded: list[tuple[str, str]] = field(default_factory=list)


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))  # fmt: skip


def not_regular(mode: int) -> str | None:
    """What a file of this ``st_mode`` is ("a FIFO", ...) when it is not a regular file, else ``None``."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def scan_folder(
    root: str,
    *,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    follow_symlinks: bool = False,
    allow_empty: bool = False,
) -> FolderScan:
    """Scan ``root/<class>/...`` for files whose suffix is in ``extensions`` (case-insensitive)."""
    if not os.path.exists(root):
        raise FileNotFoundError(f"no such image folder: {root!r}")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root!r} is a file; an image folder is a directory of class folders")
    real_root = os.path.realpath(root)
    exts = tuple(e.lower() for e in extensions)
    excluded: list[tuple[str, str]] = []
    hints: list[str] = []  # how to get each excluded path back, logged with it

    def leave_out(path: str, why: str, hint: str = "; pass follow_symlinks=True to follow it") -> bool:
        excluded.append((path, why))
        hints.append(hint)
        return False

    with os.scandir(root) as it:
        entries = sorted((e for e in it if e.is_dir()), key=lambda e: e.name)
    names = {e.name for e in entries}

    def allowed(path: str, cls: str) -> bool:
        """Whether a path found for class ``cls`` may be followed (always, if it is no link)."""
        if not os.path.islink(path):
            return True
        target = os.path.realpath(path)
        if os.path.isdir(path) and (target == real_root or real_root.startswith(target + os.sep)):
            # a folder link back to the root (or above it) would serve other classes' files again
            return leave_out(path, f"symbolic link to {target!r}, the root or one of its ancestors", "")
        inside = target.startswith(real_root + os.sep)
        into = target[len(real_root) + 1 :].split(os.sep, 1)[0] if inside else None
        if into in names and into != cls and not follow_symlinks:
            return leave_out(
                path,
                f"symbolic link to {target!r}, into the folder of class {into!r}: its images served again as {cls!r}",
            )
        if follow_symlinks or inside:
            return True
        return leave_out(path, f"symbolic link to {target!r}, outside the root")

    classes = [e.name for e in entries if allowed(e.path, e.name)]
    files: list[str] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        found: list[tuple[str, str]] = []
        seen: set[str] = set()
        for folder, dirs, fnames in os.walk(os.path.join(root, name), followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # a link cycle
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if allowed(os.path.join(folder, d), name))
            for fname in fnames:
                if not fname.lower().endswith(exts):
                    continue
                path = os.path.join(folder, fname)
                kind = None  # gone, or a dangling link: the decode reports it, naming the file
                with contextlib.suppress(OSError):
                    mode = os.lstat(path).st_mode  # the one stat a plain file costs
                    if stat.S_ISLNK(mode):
                        if not allowed(path, name):
                            continue
                        mode = os.stat(path).st_mode
                    kind = not_regular(mode)
                if kind is not None:  # a FIFO would block its reader forever
                    leave_out(path, f"not a regular file ({kind}); only regular files are read", "")
                    continue
                found.append((folder, fname))
        if not found:
            empty.append(name)
        found.sort()  # by folder, then name: torchvision's order, so indices agree with ImageFolder's
        files += [os.path.join(folder, fname) for folder, fname in found]
        labels += [label] * len(found)
    if not classes:
        raise FileNotFoundError(f"{root!r} has no class folders; expected root/<class>/<image files>")
    if empty and not allow_empty:
        raise FileNotFoundError(
            f"{root!r}: class folders {empty} hold no files with extensions {list(exts)}; "
            "add images, remove the folders, or pass allow_empty=True"
        )
    for (path, why), hint in zip(excluded, hints, strict=True):
        _log.warning("image folder %r: left out %r (%s)%s", root, path, why, hint)
    return FolderScan(classes, files, labels, excluded)
