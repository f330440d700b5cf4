"""The filesystem behind a shard URL (``s3://bucket/prefix/`` through fsspec and s3fs).

Retries are owned by :mod:`zcopy_data.remote._download` alone (bounded, with backoff, resuming
where a download broke off), so the client's own retry loops are turned down to one attempt
unless ``storage_options`` says otherwise: retries that multiply across layers are not bounded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["changed_errors", "open_filesystem", "permanent_errors", "retryable_errors"]

_S3_DEFAULTS: dict[str, Any] = {"config_kwargs": {"retries": {"total_max_attempts": 1}}}


def open_filesystem(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it (no trailing slash).

    ``AWS_ENDPOINT_URL`` (or ``storage_options={"endpoint_url": ...}``) points s3fs at an
    S3-compatible store.
    """
    try:
        import fsspec
    except ImportError as err:
        raise ImportError(f"{url!r}: remote shards need fsspec: pip install 'zcopy-data[s3]' ({err})") from None
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    options = dict(storage_options or {})
    if protocol in ("s3", "s3a"):
        try:
            import s3fs  # noqa: F401
        except ImportError as err:
            raise ImportError(f"{url!r}: s3:// URLs need s3fs: pip install 'zcopy-data[s3]' ({err})") from None
        config = {**_S3_DEFAULTS["config_kwargs"], **options.get("config_kwargs", {})}
        options = {**options, "config_kwargs": config, "skip_instance_cache": True}
    fs, path = fsspec.core.url_to_fs(url, **options)
    if protocol in ("s3", "s3a") and "retries" not in (storage_options or {}):
        fs.retries = 1  # an instance of its own (skip_instance_cache): nobody else's client changes
    return fs, str(path).rstrip("/")


def retryable_errors(fs: Any) -> tuple[type[BaseException], ...]:
    """The exceptions of a broken transfer worth another attempt: I/O errors and the client's own."""
    found: tuple[type[BaseException], ...] = (OSError, TimeoutError, EOFError)
    module = type(fs).__module__
    if module.startswith("s3fs"):
        from s3fs.core import S3_RETRYABLE_ERRORS

        found += tuple(S3_RETRYABLE_ERRORS)
    try:
        import aiohttp

        found += (aiohttp.ClientError,)
    except ImportError:
        pass
    return found


def permanent_errors() -> tuple[type[BaseException], ...]:
    """I/O errors that another attempt cannot fix (no such object, no permission)."""
    return (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def changed_errors(fs: Any) -> tuple[type[BaseException], ...]:
    """The client's "the object is not the version this read began on" errors (s3fs: ``FileExpired``)."""
    if type(fs).__module__.startswith("s3fs"):
        from s3fs.utils import FileExpired

        return (FileExpired,)
    return ()
