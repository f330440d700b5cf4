"""The host -> device hop: copies on one side stream, handed to the consumer by events.

Rule by rule:

1. copies read pinned memory (a gather buffer, or a slot of a :class:`PinnedBufferPool`) with
   ``non_blocking=True``; pageable memory is copied synchronously, and the ledger says so;
2. they run on one persistent transfer stream per device, never on the consumer's stream;
3. the device tensors get ``record_stream(consumer)``, so the caching allocator never hands
   their memory to another tensor before the consumer's work on them is done;
4. the consumer's stream waits on the copy's event: a device-side wait, the host runs on;
5. and 6. host tensors a copy reads stay referenced until its event completes, so no pool
   rewrites a buffer the device is still reading;
7. :class:`DevicePrefetcher` keeps ``depth`` batches in flight, its pool has ``depth + 2`` slots.

Device-side casts (:class:`~zcopy_data.transfer.cast.DeviceCast`) run on the transfer stream
right after the copy, so the consumer receives finished tensors. With ``device="cpu"`` nothing is
pinned or copied and the same casts run on the CPU: the same batches, on every build.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from zcopy_data._storage import nbytes
from zcopy_data._tree import leaves, map_tensors
from zcopy_data.ledger import PIN, TRANSFER, record, record_all
from zcopy_data.memory.inflight import hold_until
from zcopy_data.memory.pinned import PinnedBufferPool, PinnedSlot
from zcopy_data.memory.policy import ExactPinnedAllocation, HostAllocation
from zcopy_data.schema import Schema, schema_of
from zcopy_data.transfer._streams import on_stream, resolve_device, side_stream
from zcopy_data.transfer.cast import CastMap, DeviceCast
from zcopy_data.transfer.static import StaticRing

__all__ = ["DevicePrefetcher", "to_device"]


def _as_cast(cast: CastMap | DeviceCast | None, schema: Schema | None = None) -> DeviceCast:
    if isinstance(cast, DeviceCast) and schema is None:
        return cast
    return DeviceCast(cast, schema)


# -- one batch -----------------------------------------------------------------------------------
class _Transfer:
    """One batch's copies, issued on the transfer stream; :meth:`handoff` gives it to the consumer."""

    def __init__(
        self,
        batch: Any,
        device: torch.device,
        cast: DeviceCast,
        *,
        non_blocking: bool,
        stream: torch.Stream,
        slot: PinnedSlot | None = None,
    ) -> None:
        self.device = device
        host: list[torch.Tensor] = []

        def copy(name: str, t: torch.Tensor) -> torch.Tensor:
            if t.device == device:
                record(TRANSFER, name, "already on the device", viewed=nbytes(t))
                return t
            if t.device.type == "cpu":
                host.append(t)
                pinned = t.is_pinned()
                reason = (
                    "DMA from pinned memory on the transfer stream"
                    if pinned
                    else "pageable memory: synchronous copy (gather into pinned memory to overlap it)"
                )
                record(TRANSFER, name, reason, copied=nbytes(t))
                return t.to(device, non_blocking=non_blocking and pinned)
            record(TRANSFER, name, f"from {t.device}", copied=nbytes(t))
            return t.to(device, non_blocking=non_blocking)

        try:
            consumer = torch.accelerator.current_stream(device)
            if any(t.device.type != "cpu" for _, t in leaves(batch)):
                stream.wait_stream(consumer)  # tensors already on a device were written on the consumer's stream
            with on_stream(stream):
                out = cast(map_tensors(batch, copy))
                self.event = stream.record_event()
        except BaseException:
            if slot is not None:  # copies already issued may still read the slot: let them finish first
                stream.synchronize()
                slot.release()
            raise
        hold_until(self.event, host)
        if slot is not None:
            slot.release(self.event)
        self.batch = out

    def handoff(self) -> Any:
        """Make the current stream wait for the copies; mark the tensors as used by it."""
        consumer = torch.accelerator.current_stream(self.device)
        consumer.wait_event(self.event)
        for _, t in leaves(self.batch):
            if t.device == self.device:
                t.record_stream(consumer)
        return self.batch


_NO_PIN = "skipped: no accelerator to pin for"
_ON_CPU = "skipped: target device is cpu"


def _to_cpu(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "cpu":
        record(TRANSFER, name, _ON_CPU, viewed=nbytes(t))
        return t
    record(TRANSFER, name, f"from {t.device} to cpu", copied=nbytes(t))
    return t.to("cpu")


def _flat_cpu(batch: dict[Any, Any]) -> bool:
    """Whether ``batch`` is a flat dict of CPU tensors under str keys: the CPU stage's walks then
    reduce to one loop."""
    for name, t in batch.items():
        if type(name) is not str or type(t) is not torch.Tensor or not t.is_cpu:
            return False
    return True


def to_device(
    batch: Any,
    device: torch.device | str | int,
    *,
    non_blocking: bool = True,
    cast: CastMap | DeviceCast | None = None,
    stream: torch.Stream | None = None,
) -> Any:
    """Move a batch (nested dict / list / tuple of tensors) to ``device``, then cast it there.

    The copies run on ``stream`` (default: the device's persistent transfer stream); the current
    stream waits for them on the device, and the returned tensors are safe to use on it at once.

    Args:
        batch: the batch; non-tensor leaves pass through.
        device: target device; ``"cpu"`` moves nothing and still applies ``cast``.
        non_blocking: copy pinned host memory asynchronously.
        cast: field -> dtype or :class:`~zcopy_data.transfer.Cast`, applied on the device.
        stream: the transfer stream to copy on.

    >>> batch = {"image": torch.full((2, 3), 255, dtype=torch.uint8), "label": torch.tensor([0, 1])}
    >>> to_device(batch, "cpu", cast={"image": torch.float32})["image"].dtype
    torch.float32
    """
    dev = resolve_device(device)
    caster = _as_cast(cast)
    if dev.type == "cpu":
        return caster(map_tensors(batch, _to_cpu))
    side = stream if stream is not None else side_stream(dev)
    return _Transfer(batch, dev, caster, non_blocking=non_blocking, stream=side).handoff()


# -- a loader's batches, prefetched -------------------------------------------------------------
class DevicePrefetcher:
    """Iterate a loader's batches on ``device``, with ``depth`` batches' copies in flight.

    While the model computes on batch ``k``, batches ``k+1 .. k+depth`` are being copied on the
    transfer stream. A batch that is not already in pinned memory (one assembled in a worker,
    say) is first copied into a slot of an exact-size pinned pool with ``depth + 2`` slots.
    Over a loader that offers ``host_batches(allocation)`` (a
    :class:`~zcopy_data.ZeroCopyDataLoader`), the prefetcher hands it an
    :class:`~zcopy_data.memory.ExactPinnedAllocation`: batches gathered in this process -- by
    gather threads too -- land straight in exact-size pinned buffers, guarded by our copy events.

    Args:
        loader: any iterable of batches (a ``DataLoader``, usually).
        device: target device; ``"cpu"`` yields the loader's batches, cast.
        depth: batches in flight ahead of the consumer (>= 1).
        cast: device cast map, checked now against the dataset's schema when the loader has a
            :class:`~zcopy_data.ZeroCopyDataset`, else at the first batch.
        non_blocking: copy asynchronously (only pinned memory can be).
        pin: stage batches that are not pinned through the pool (accelerators only).
        schema: the batches' schema, when the loader cannot tell.
        static: deliver every batch into the same buffers, for a model step captured as a CUDA
            graph (:mod:`zcopy_data.transfer.static`): a ring of ``slots`` fixed-address buffer
            sets, allocated at the first batch and kept for every epoch; :attr:`ring` names them.
            A batch stays unchanged until the consumer asks for the one ``slots - depth`` after it
            (``depth`` is cut to ``slots - 1``; with one slot each copy starts when its batch is
            asked for). The copy and the casts write into the slot; nothing else is allocated.
        slots: buffer sets in the static ring (default ``depth + 1``; ``static=True`` only).

    >>> import numpy as np
    >>> from torch.utils.data import DataLoader
    >>> from zcopy_data import NumpyDataset, zero_copy_collate
    >>> ds = NumpyDataset({"image": np.zeros((8, 3, 2, 2), np.uint8), "label": np.arange(8)})
    >>> loader = DataLoader(ds, batch_size=4, collate_fn=zero_copy_collate)
    >>> [b["image"].dtype for b in DevicePrefetcher(loader, "cpu", cast={"image": torch.float16})]
    [torch.float16, torch.float16]
    """

    def __init__(
        self,
        loader: Iterable[Any],
        device: torch.device | str | int,
        depth: int = 2,
        cast: CastMap | DeviceCast | None = None,
        *,
        non_blocking: bool = True,
        pin: bool = True,
        schema: Schema | None = None,
        static: bool = False,
        slots: int | None = None,
    ) -> None:
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"{depth=} should be an int >= 1")
        if slots is not None and not static:
            raise ValueError(f"{slots=} sizes the static ring: pass static=True with it, or leave slots out")
        self.loader = loader
        self.device = resolve_device(device)
        self.depth = depth
        self.cast = _as_cast(cast, schema if schema is not None else schema_of(loader, from_sample=False))
        self.non_blocking = non_blocking
        self.pin = pin
        self.pool: PinnedBufferPool | None = None
        self.allocation: ExactPinnedAllocation | None = None  # exact pinned gathers, built on first use
        # on cpu, the casts' outputs: reused once nothing holds them (the batches in flight, the
        # one in use and the one before it), not a fresh buffer per batch for glibc to give back
        self._cast_outputs: HostAllocation | None = None
        self.ring = StaticRing(depth + 1 if slots is None else slots, self.device, self.cast) if static else None

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def _host_iter(self, on_cpu: bool) -> Iterator[Any]:
        host_batches = getattr(self.loader, "host_batches", None)
        if host_batches is None:
            return iter(self.loader)
        if on_cpu:
            return host_batches()  # type: ignore[no-any-return]
        if self.allocation is None:  # one per prefetcher: its buffers are reused every epoch
            self.allocation = ExactPinnedAllocation(per_shape=self.depth + 4)
        # every batch pulled here is copied by us, under our events: exact-size pinned buffers
        it: Iterator[Any] = host_batches(self.allocation)
        return it

    def __iter__(self) -> Iterator[Any]:
        """The loader's epoch on the device. Over a loader that counts what its consumer has
        received (``track``, a :class:`~zcopy_data.ZeroCopyDataLoader`), the count is taken
        here, not at the batches in flight: its ``state_dict()`` resumes after the last batch
        handed over."""
        batches = self._batches()
        track = getattr(self.loader, "track", None)
        return track(batches) if track is not None and hasattr(self.loader, "host_batches") else batches

    def _batches(self) -> Iterator[Any]:
        # generators: the loader's epoch begins at the first batch asked for, not at iter()
        if self.ring is not None:
            return self._static_batches(self.ring)
        return self._cpu_batches() if self.device.type == "cpu" else self._device_batches()

    def _cpu_batches(self) -> Iterator[Any]:
        """``depth`` batches ahead, as on a device, each cast when it is pulled from the loader."""
        it = self._host_iter(True)
        start = self._start_cpu
        queue: deque[Any] = deque()
        for _ in range(self.depth):
            try:
                queue.append(start(next(it)))
            except StopIteration:
                break
        while queue:
            batch = queue.popleft()
            try:
                queue.append(start(next(it)))
            except StopIteration:
                pass
            yield batch

    def _device_batches(self) -> Iterator[Any]:
        it = self._host_iter(False)
        start = self._start_device
        queue: deque[_Transfer] = deque()
        consumed: deque[torch.Event] = deque()  # consumer progress, one event per batch handed over

        def issue() -> bool:
            try:
                batch = next(it)
            except StopIteration:
                return False
            queue.append(start(batch))
            return True

        for _ in range(self.depth):
            if not issue():
                break
        while queue:
            batch = queue.popleft().handoff()
            # The host may run ahead of the device by at most depth + 2 batches: beyond that,
            # device memory and pinned buffers would pile up behind the consumer's stream.
            consumed.append(torch.accelerator.current_stream(self.device).record_event())
            while len(consumed) > self.depth + 1:
                consumed.popleft().synchronize()
            issue()
            yield batch

    def _static_batches(self, ring: StaticRing) -> Iterator[Any]:
        """Every batch written into slot ``k % slots`` of ``ring``, ``slots - 1`` at most ahead.

        When the consumer asks for batch ``k``, an event on its stream marks the end of the work
        it queued on batch ``k - 1``; the copy that next rewrites that batch's slot waits for it
        on the device. On ``cpu`` the copies run in order, synchronously: the same schedule.
        """
        on_cpu = self.device.type == "cpu"
        it = self._host_iter(on_cpu)
        ahead = min(self.depth, ring.slots - 1)
        freed: list[torch.Event | None] = [None] * ring.slots  # per slot: the consumer is done with it
        queue: deque[tuple[Any, torch.Event | None]] = deque()
        consumed: deque[torch.Event] = deque()
        issued = 0

        def issue() -> bool:
            nonlocal issued
            try:
                batch = next(it)
            except StopIteration:
                return False
            slot = issued % ring.slots
            if on_cpu:
                queue.append((ring.fill(slot, batch, non_blocking=False), None))
            else:
                queue.append(self._fill_on_device(ring, slot, batch, freed[slot]))
            issued += 1
            return True

        for _ in range(ahead):
            if not issue():
                break
        handed = 0
        while True:
            if not on_cpu and handed:
                done = torch.accelerator.current_stream(self.device).record_event()
                freed[(handed - 1) % ring.slots] = done  # the work queued on the batch before this one
                consumed.append(done)
                while len(consumed) > self.depth + 1:  # the host runs at most depth + 2 batches ahead
                    consumed.popleft().synchronize()
            if not ahead and not issue():
                return
            if not queue:
                return
            batch, copied = queue.popleft()
            if copied is not None:
                torch.accelerator.current_stream(self.device).wait_event(copied)
            if ahead:
                issue()
            handed += 1
            yield batch

    def _fill_on_device(
        self, ring: StaticRing, slot: int, batch: Any, freed: torch.Event | None
    ) -> tuple[Any, torch.Event]:
        """Copy ``batch`` into ``slot`` on the transfer stream, after ``freed``; the batch and its event."""
        stream = side_stream(self.device)
        batch, pool_slot = self._stage(batch)
        host = [t for _, t in leaves(batch) if t.device.type == "cpu"]
        try:
            consumer = torch.accelerator.current_stream(self.device)
            if len(host) != sum(1 for _ in leaves(batch)):
                stream.wait_stream(consumer)  # tensors already on a device were written on the consumer's stream
            with on_stream(stream):
                if freed is not None:
                    stream.wait_event(freed)
                out = ring.fill(slot, batch, non_blocking=self.non_blocking)
                event = stream.record_event()
        except BaseException:
            if pool_slot is not None:
                stream.synchronize()
                pool_slot.release()
            raise
        hold_until(event, host)
        if pool_slot is not None:
            pool_slot.release(event)
        return out, event

    def _start_cpu(self, batch: Any) -> Any:
        """The batch, cast: nothing is pinned or copied on ``cpu``, and the ledger says so."""
        if type(batch) is dict and _flat_cpu(batch):
            out = dict(batch)
            sizes = [(name, t.nbytes) for name, t in out.items()]
            # the records of the general walks, in their order: every pin, every transfer, the casts
            records = [(PIN, n, _NO_PIN, b, 0) for n, b in sizes] + [(TRANSFER, n, _ON_CPU, b, 0) for n, b in sizes]
            if self._cast_outputs is None:
                self._cast_outputs = HostAllocation(per_shape=self.depth + 4)
            try:
                self.cast.cast_fields(out, "cpu", records, self._cast_outputs)
            finally:  # a cast that fails leaves the work done before it counted, as the walks do
                record_all(records)
            return out
        for name, t in leaves(batch):
            if t.device.type == "cpu":
                record(PIN, name, _NO_PIN, viewed=nbytes(t))
        return self.cast(map_tensors(batch, _to_cpu))

    def _start_device(self, batch: Any) -> _Transfer:
        stream = side_stream(self.device)
        batch, slot = self._stage(batch)
        return _Transfer(batch, self.device, self.cast, non_blocking=self.non_blocking, stream=stream, slot=slot)

    def _stage(self, batch: Any) -> tuple[Any, PinnedSlot | None]:
        """Copy host tensors that are not pinned into a pool slot (one counted copy); others pass."""
        host = [(n, t) for n, t in leaves(batch) if t.device.type == "cpu"]
        unpinned = {n: t for n, t in host if not t.is_pinned()}
        for n, t in host:
            if n not in unpinned:
                record(PIN, n, "free: already in pinned memory (gathered there)", viewed=nbytes(t))
        if not unpinned or not self.pin:
            return batch, None
        if self.pool is None:
            self.pool = PinnedBufferPool(
                {n: (tuple(t.shape), t.dtype) for n, t in unpinned.items()}, slots=self.depth + 2
            )
        specs = self.pool.specs
        fits = all(
            n in specs
            and t.dtype == specs[n][1]
            and t.dim() == len(specs[n][0])
            and t.shape[0] <= specs[n][0][0]
            and tuple(t.shape[1:]) == specs[n][0][1:]
            for n, t in unpinned.items()
        )
        if not fits:
            return batch, None  # an odd batch: its copy is synchronous, and the ledger says so
        slot = self.pool.acquire()
        staged: dict[str, torch.Tensor] = {}
        try:
            for n, t in unpinned.items():
                dst = slot[n][: t.shape[0]]
                dst.copy_(t)
                record(PIN, n, "copied into a pinned pool slot", copied=nbytes(t))
                staged[n] = dst
        except BaseException:
            slot.release()
            raise
        return map_tensors(batch, lambda n, t: staged.get(n, t)), slot
