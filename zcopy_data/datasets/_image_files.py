"""Finding the images of a class-subfolder tree (``root/<class>/**/<file>``), the torchvision layout.

Classes are the sorted names of the folders directly under ``root``; files are found recursively
and sorted, so every process and every run sees the same order. A symbolic link (file or folder)
that resolves outside ``root`` is not followed unless asked: it is left out and listed, never
dropped silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

__all__ = ["IMG_EXTENSIONS", "FolderScan", "scan_folder"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_log = logging.getLogger("zcopy_data")


@dataclass
class FolderScan:
    """What a scan found: classes, files with their labels, and what it left out and why."""

    classes: list[str]
    files: list[str]
    labels: list[int]
    excluded: list[tuple[str, str]] = field(default_factory=list)


def _inside(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


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

    def allowed(path: str) -> bool:
        if not os.path.islink(path):
            return True
        target = os.path.realpath(path)
        if os.path.isdir(path) and (target == real_root or real_root.startswith(target + os.sep)):
            # a folder link back to the root (or above it) would serve other classes' files again
            excluded.append((path, f"symbolic link to {target!r}, the root or one of its ancestors"))
            return False
        if follow_symlinks or _inside(path, real_root):
            return True
        excluded.append((path, f"symbolic link to {target!r}, outside the root"))
        return False

    with os.scandir(root) as it:
        entries = sorted((e for e in it if e.is_dir()), key=lambda e: e.name)
    classes = [e.name for e in entries if allowed(e.path)]
    files: list[str] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        found: list[tuple[str, str]] = []
        seen: set[str] = set()
        for folder, dirs, names in os.walk(os.path.join(root, name), followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # a link cycle
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if allowed(os.path.join(folder, d)))
            for fname in names:
                path = os.path.join(folder, fname)
                if fname.lower().endswith(exts) and allowed(path):
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
    for path, why in excluded:
        _log.warning("image folder %r: left out %r (%s); pass follow_symlinks=True to follow it", root, path, why)
    return FolderScan(classes, files, labels, excluded)
