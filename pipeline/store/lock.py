"""Keeping a second driver off a job store: a file lock locally, a lease remotely."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.store.urls import access, filesystem, reason

log = logging.getLogger(__name__)

LEASE_TTL_S = 60.0  # a driver lease not renewed for this long is stale
LEASE_BEAT_S = 10.0
# One token per driver process: it recognises its own lease, whichever object took it.
DRIVER_TOKEN = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FileLock:
    """An exclusive ``flock`` on ``driver.lock`` in a local store (released when the
    process dies), naming its holder for the message a second driver gets."""

    def __init__(self, store_dir: Path, store_url: str) -> None:
        self.path, self.store_url = store_dir / "driver.lock", store_url
        self._fh: Any = None

    def acquire(self) -> None:
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the life of the job
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise UserError(
                f"job store {self.store_url} is in use by {holder}; wait for it to finish "
                "(two runs on one store at once would corrupt it)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Lease:
    """Keeps a second driver off a remote job store, where no file lock exists.

    An object ``driver.lease`` in the store holds the owner and a heartbeat time that a
    background thread renews every LEASE_BEAT_S. A lease renewed within LEASE_TTL_S
    refuses another driver; an older one (its driver died) is taken over. Object stores
    have no compare-and-swap here, so two drivers starting within the same second could
    both read "free": each re-reads after writing, and the one that lost steps back.
    Heartbeats use the writers' clocks: keep them within LEASE_TTL_S of each other.
    """

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.fs, root = filesystem(store_url)
        self.path = f"{root}/driver.lease"
        self.owner = f"pid {os.getpid()} on {socket.gethostname()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign object: treat as stale
            return {"token": "?", "owner": "unknown", "heartbeat": 0.0}

    def _write(self) -> None:
        record = {"token": DRIVER_TOKEN, "owner": self.owner, "heartbeat": time.time()}
        self.fs.pipe_file(self.path, json.dumps(record).encode())

    def _refuse(self, held: dict[str, Any], age_s: float) -> UserError:
        return UserError(
            f"job store {self.store_url} is in use by {held.get('owner', 'another driver')} "
            f"(lease renewed {age_s:.0f} s ago); wait for it to finish (a dead driver's "
            f"lease expires {LEASE_TTL_S:.0f} s after its last renewal)"
        )

    def acquire(self, settle_s: float = 0.5) -> None:
        with access(self.store_url):
            held = self._read()
            if held and held.get("token") != DRIVER_TOKEN:
                age = time.time() - float(held.get("heartbeat", 0.0))
                if age < LEASE_TTL_S:
                    raise self._refuse(held, age)
                log.warning("taking over the stale lease of %s on %s", held.get("owner"), self)
            self._write()
            time.sleep(settle_s)
            now = self._read()
        if not now or now.get("token") != DRIVER_TOKEN:
            raise self._refuse(now or {}, 0.0)
        self._thread = threading.Thread(target=self._beat, name="store-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_BEAT_S):
            try:
                self._write()
            except Exception as exc:  # noqa: BLE001 - keep trying; the job itself goes on
                log.warning("could not renew the lease on %s: %s", self.store_url, reason(exc))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            held = self._read()
            if held and held.get("token") == DRIVER_TOKEN:
                self.fs.rm_file(self.path)
        except Exception as exc:  # noqa: BLE001 - the store may be gone already
            log.debug("lease release on %s: %s", self.store_url, reason(exc))

    def __str__(self) -> str:
        return self.store_url
