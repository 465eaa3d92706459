"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection
does it: the holder renews every ``renew_every``; another replica takes the Lease once it
has gone ``duration`` without a renewal. Every write carries the resourceVersion it read,
so two replicas can never both win the same round. A leader that has not renewed within
the renew deadline (two thirds of the duration, counted from before the renewal it
last wrote) steps down on its own, so it has stopped well before another replica may
take the Lease; and so does one whose own work has stalled (``healthy``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from webhook.common.inputs import timestamp
from webhook.kube.api import Api, ApiError

log = logging.getLogger("proxy_injector.lease")


def micro_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Lease:
    def __init__(
        self,
        api: Api,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        on_change: Callable[[bool], None] | None = None,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.duration = duration
        self.renew_every = duration / 3
        self.renew_deadline = duration * 2 / 3
        self.healthy = healthy
        self.on_change = on_change
        self.leading = False
        self.renewed = 0.0
        """monotonic time when the last successful round started (its renewTime)."""
        self.holder = ""

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def _spec(self, current: dict[str, Any], now: dt.datetime, taking: bool) -> dict[str, Any]:
        spec = dict(current)
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self.duration)),
            renewTime=micro_time(now),
        )
        if taking:
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + (
                1 if current.get("holderIdentity") else 0
            )
        return spec

    async def _create(self, now: dt.datetime) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec({}, now, taking=True),
        }
        path = self.path.rsplit("/", 1)[0]
        await self.api.call("POST", path, body)

    def _expired(self, spec: dict[str, Any], now: dt.datetime) -> bool:
        renewed = timestamp(spec.get("renewTime")) or timestamp(spec.get("acquireTime"))
        seconds = float(spec.get("leaseDurationSeconds") or self.duration)
        return renewed is None or now >= renewed + dt.timedelta(seconds=seconds)

    async def try_once(self) -> bool:
        """One round: renew, take an expired Lease, or see someone else holds it."""
        now = dt.datetime.now(dt.UTC)
        try:
            lease = await self.api.call("GET", self.path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            await self._create(now)
            return True
        spec = lease.get("spec") or {}
        self.holder = spec.get("holderIdentity") or ""
        mine = self.holder == self.identity
        if not mine and self.holder and not self._expired(spec, now):
            return False
        lease["spec"] = self._spec(spec, now, taking=not mine)
        await self.api.call("PUT", self.path, lease)
        return True

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info(
                "%s the lease %s/%s",
                "holding" if leading else "not holding",
                self.namespace,
                self.name,
            )
            if self.on_change:
                self.on_change(leading)

    async def run(self) -> None:
        while True:
            won: bool | None
            started = time.monotonic()
            if self.leading and started - self.renewed >= self.renew_deadline:
                self._set(False)  # the renew deadline passed while the last round was out
            if self.healthy is not None and not self.healthy():
                # Let it go: another replica takes it once it expires.
                if self.leading:
                    log.warning(
                        "lease %s/%s: this replica's work has stalled", self.namespace, self.name
                    )
                self._set(False)
                await asyncio.sleep(self.renew_every)
                continue
            try:
                won = await asyncio.wait_for(self.try_once(), self._left(started))
            except ApiError as exc:
                won = False if exc.status == 409 else None  # 409: another replica wrote first
                if won is None:
                    log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            except (TimeoutError, ValueError, OSError) as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc or "no answer")
                won = None
            if won:
                self.renewed = started
                self._set(True)
            elif won is False or time.monotonic() - self.renewed >= self.renew_deadline:
                # Another replica holds it, or we could not renew within the renew deadline
                # (another may take it once the duration is out): stop now, before it can.
                self._set(False)
            await asyncio.sleep(self._left(time.monotonic()))

    def _left(self, now: float) -> float:
        """Until the next round: a round each ``renew_every``, and while leading none that
        could end after the renew deadline (the loop steps down at the deadline)."""
        if not self.leading:
            return self.renew_every
        return max(0.05, min(self.renew_every, self.renewed + self.renew_deadline - now))
