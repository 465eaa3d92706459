"""Running a function inside a pod's network namespace, from the agent's event loop.

``setns`` changes the calling thread only, and iptables' own processes inherit it from that
thread; so each call gets a thread of its own that enters the namespace, works, and ends,
and no thread that was ever inside a pod goes back to a pool."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NamespaceError(OSError):
    pass


def enter(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NamespaceError(f"cannot open the network namespace {path}: {exc.strerror}") from None
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = os.strerror(ctypes.get_errno())
            raise NamespaceError(f"cannot enter the network namespace {path}: {error}")
    finally:
        os.close(fd)


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


async def run_in(path: str, work: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def inside() -> None:
        result, error = None, None
        try:
            enter(path)
            result = work()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=inside, name=f"netns {path}", daemon=True).start()
    return await future
