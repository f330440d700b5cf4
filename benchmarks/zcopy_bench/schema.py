"""The shape of the benchmark's JSON record, checked by :func:`validate_result`.

Tools that read ``bench.json`` (the README table, CI comparisons) rely on these keys; a change
here bumps :data:`~zcopy_bench.runner.SCHEMA_VERSION`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ROW_KEYS", "validate_result"]

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))

TOP_KEYS: dict[str, Any] = {
    "schema_version": int,
    "created_utc": str,
    "wall_s": _NUM,
    "config": dict,
    "data": dict,
    "machine": dict,
    "contenders": dict,
    "skipped": list,
    "limits": dict,
    "rows": list,
    "targets": list,
    "paired": list,
}
PAIRED_KEYS: dict[str, Any] = {"order": str, "workers": int, "ratio": _NUM, "ratios": list}
ROW_KEYS: dict[str, Any] = {
    "contender": str,
    "order": str,
    "workers": int,
    "samples_per_s": _NUM,
    "gb_per_s": _NUM,
    "copies_per_batch": _OPT_NUM,
    "copies_basis": str,
    "peak_mem_mib": _NUM,
    "peak_rss_mib": _NUM,
    "ratio_to_default": _OPT_NUM,
    "fraction_of_gather_1t": _NUM,
    "fraction_of_index_select_all": _NUM,
    "runs": int,
    "rates": list,
}
LIMIT_KEYS: dict[str, Any] = {"description": str, "samples_per_s": _NUM, "gb_per_s": _NUM, "runs": int}
MACHINE_KEYS: dict[str, Any] = {
    "cpus": int,
    "cpu_model": (str, type(None)),
    "memory_gib": _OPT_NUM,
    "accelerator": (str, type(None)),
    "platform": str,
    "python": str,
    "libraries": dict,
}
TARGET_KEYS: dict[str, Any] = {
    "name": str,
    "sides": str,
    "value": _NUM,
    "goal": _NUM,
    "ratios": list,
    "rounds": int,
    "interval": list,
    "confidence": _NUM,
    "range": list,
    "met": (bool, type(None)),
    "verdict": str,
}
_VERDICT_OF = {True: "met", False: "NOT met", None: "inconclusive"}


def _check(obj: Any, keys: dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, found {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    for k, types in keys.items():
        v = obj[k]
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise ValueError(f"{where}.{k}: expected {names}, found {type(v).__name__} {v!r}")


def validate_result(result: Any) -> None:
    """Raise ``ValueError`` naming the first key that is missing or of the wrong type."""
    _check(result, TOP_KEYS, "result")
    _check(result["machine"], MACHINE_KEYS, "result.machine")
    for lib, version in result["machine"]["libraries"].items():
        if not isinstance(version, (str, type(None))):
            raise ValueError(f"result.machine.libraries.{lib}: expected a version string or null, found {version!r}")
    for order, kinds in result["limits"].items():
        for kind in ("gather_1t", "index_select_all"):
            _check(kinds.get(kind), LIMIT_KEYS, f"result.limits.{order}.{kind}")
    if not result["rows"]:
        raise ValueError("result.rows: expected at least one row")
    for i, row in enumerate(result["rows"]):
        _check(row, ROW_KEYS, f"result.rows[{i}]")
        if row["order"] not in result["limits"]:
            raise ValueError(f"result.rows[{i}].order: {row['order']!r} has no entry in result.limits")
        if row["runs"] != len(row["rates"]) or row["runs"] < 1:
            raise ValueError(f"result.rows[{i}]: runs={row['runs']} but {len(row['rates'])} rates")
    for i, pair in enumerate(result["paired"]):
        _check(pair, PAIRED_KEYS, f"result.paired[{i}]")
    for i, t in enumerate(result["targets"]):
        _check(t, TARGET_KEYS, f"result.targets[{i}]")
        if t["verdict"] != _VERDICT_OF[t["met"]]:
            raise ValueError(f"result.targets[{i}]: verdict {t['verdict']!r} but met={t['met']!r}")
        if t["rounds"] != len(t["ratios"]) or t["rounds"] < 1:
            raise ValueError(f"result.targets[{i}]: rounds={t['rounds']} but {len(t['ratios'])} ratios")
    for i, s in enumerate(result["skipped"]):
        _check(s, {"contender": str, "reason": str}, f"result.skipped[{i}]")
