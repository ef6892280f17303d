"""The composition root: one asyncio process running every listener, reloading the manifest live.

A reload reads the file, validates it, builds a new snapshot and swaps one reference. A manifest
with any problem is never applied: the last good snapshot keeps serving and the problems go to the
log and to the status file. Listener changes apply live: new ones open, removed ones stop
accepting while their sessions finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import watchfiles

from appliance.auth.service import AuthService
from appliance.connection import Listener
from appliance.context import ListenerSpec, Services, SessionCounter, listener_specs
from appliance.imap.sender import Senders
from appliance.imap.server import IMAPServer
from appliance.loglines import EscapingFormatter, JournalFormatter, under_journald
from appliance.managesieve import start_managesieve
from appliance.manifest import LoadedManifest, ManifestError, Problem, parse_manifest
from appliance.manifest.scripts import scripts_digest
from appliance.memory import freeze_live_objects, limit_malloc_arenas, release_memory
from appliance.metrics import Metrics, Reading, start_metrics_listener
from appliance.pop3 import readahead, start_pop3
from appliance.queue import OutboundQueue
from appliance.security import AutoBan
from appliance.smtp import start_smtp
from appliance.snapshot import Snapshot, SnapshotHolder, build_snapshot
from appliance.status import process_figures, write_serving_copy, write_status
from appliance.store.mailstore import MailStore
from appliance.store.reader import ReaderProcess
from appliance.store.responses import ResponseRecord
from appliance.store.sweep import sweep_tmp
from appliance.store.userscripts import UserScripts
from appliance.store.writer import DeliveryProcess
from appliance.systemd import SystemdNotifier, watchdog_interval
from appliance.tls import TLSProvider

log = logging.getLogger("appliance.serve")

# Opens one listener of the manifest's [server.listeners], with everything the protocol needs.
Factory = Callable[[ListenerSpec], Awaitable[Listener]]

SHUTDOWN_GRACE_SECONDS = 10.0
SCANNER_CHECK_INTERVAL = 10.0  # seconds without a scan after which status asks rspamd (/ping)
STALL_SECONDS = 4.0  # the test hook's blocked loop
# As the session counter names them: SMTP by listener, POP3 and IMAP by protocol.
PROTOCOLS = ("smtp", "submission", "submissions", "pop3", "imap")


def git_revision(path: Path) -> str | None:
    """The commit of the Git work tree holding the manifest, if any (no network, read-only)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(path.parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _pid(process: object) -> int | None:
    """The pid of a helper process (store/child.py) the server started, if it did."""
    pid: int | None = getattr(process, "pid", None)
    return pid


class Server:
    def __init__(self, loaded: LoadedManifest, manifest_path: Path, raw: bytes = b"") -> None:
        self.manifest_path = manifest_path
        self._first_raw = raw  # written to state/serving.toml at start, then dropped
        snapshot = build_snapshot(loaded)
        self.holder = SnapshotHolder(snapshot)
        self.data_dir = snapshot.data_dir
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="disk")
        # Reloads parse and build in one thread of their own: glibc gives each thread that
        # allocates its own malloc arena, and a 100k-account manifest built in whichever disk
        # thread was free would leave its freed memory in a different arena each time.
        self.loader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest")
        self.tls = TLSProvider(self.holder)
        self.listeners: dict[str, tuple[ListenerSpec, Listener]] = {}
        self.listener_errors: dict[str, str] = {}
        self.last_error: list[str] = []
        self.last_error_at: float | None = None
        self.git_commit = git_revision(manifest_path)
        self.notifier = SystemdNotifier()
        self.metrics = Metrics()
        self.stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        # Built by start(), whole, before the first listener opens.
        self.services: Services | None = None
        self.imap: IMAPServer | None = None
        self.factories: dict[str, Factory] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._rechecks: asyncio.Task[None] | None = None  # sessions that follow the directory
        self.reloads_applied = 0
        self.reloads_rejected = 0
        # Every reload that ended (applied, unchanged or rejected) and how the last one ended:
        # `appliance reload` waits for this count to move past the one it saw before its signal.
        self.reloads_finished = 0
        self.last_reload_result = ""

    # -- start and stop ----------------------------------------------------------------------
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "state").mkdir(exist_ok=True)
        write_serving_copy(self.data_dir, self._first_raw)
        self._first_raw = b""
        self.tls.ensure_files()
        self.tls.server_context()  # fail now, not at the first client, when the files are unusable
        autoban = AutoBan(self.holder)
        # POP3 RETR reads in a process of their own (store/reader.py says why).
        reader_process = ReaderProcess(preload=(readahead.__name__,))
        await reader_process.start()
        delivery_process = DeliveryProcess()
        await delivery_process.start()
        store = MailStore(self.data_dir, self.executor, delivery_process)
        queue = OutboundQueue(self.holder, store, self.executor, self.data_dir, self.metrics)
        services = Services(
            holder=self.holder,
            auth=AuthService(self.holder, autoban=autoban, metrics=self.metrics),
            store=store,
            tls=self.tls,
            executor=self.executor,
            queue=queue,
            sessions=SessionCounter(),
            autoban=autoban,
            reader_process=reader_process,
            metrics=self.metrics,
            responses=ResponseRecord(self.data_dir),
            userscripts=UserScripts(self.data_dir),
        )
        self._register_gauges(services)
        # The FETCH sender processes start when a FETCH first needs one.
        imap = IMAPServer(services, Senders())
        smtp, pop3 = functools.partial(start_smtp, services), functools.partial(start_pop3, services)
        self.services, self.imap = services, imap
        self.factories = {
            "smtp": smtp,
            "submission": smtp,
            "submissions": smtp,
            "pop3": pop3,
            "pop3s": pop3,
            "imap": imap.start,
            "imaps": imap.start,
            "metrics": lambda spec: start_metrics_listener(self.metrics, spec.host, spec.port),
            "managesieve": functools.partial(start_managesieve, services),
        }
        await queue.start()
        if services.userscripts is not None:
            await asyncio.get_running_loop().run_in_executor(self.executor, services.userscripts.load)
        await self.apply_listeners(self.holder.current)
        self.log_loaded(self.holder.current, "started")
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_tmp(time.time()))
        self._rechecks = asyncio.get_running_loop().create_task(services.auth.revocations.run())

    def _register_gauges(self, services: Services) -> None:
        """The metrics that are a state, read at each scrape (metrics.py): name, help, labels, read."""
        current = self.holder

        def sessions() -> list[tuple[tuple[str, ...], float]]:
            counts = {**dict.fromkeys(PROTOCOLS, 0), **services.sessions.counts()}
            return [((name,), float(count)) for name, count in counts.items()]

        table: list[tuple[str, str, tuple[str, ...], Reading]] = [
            ("appliance_sessions", "Open sessions per protocol (SMTP: per listener).", ("protocol",), sessions),
            ("appliance_queue_messages", "Messages in the outbound queue.", (),
             lambda: [((), float(services.queue.figures()[0]))]),
            ("appliance_queue_oldest_age_seconds", "Age of the oldest message in the outbound queue.", (),
             lambda: [((), services.queue.figures()[1])]),
            ("appliance_revision", "The manifest revision serving (always 1).", ("revision",),
             lambda: [((current.current.revision,), 1.0)]),
            ("appliance_revision_loaded_timestamp_seconds", "When the revision serving was loaded.", (),
             lambda: [((), current.current.loaded_at)]),
            ("appliance_accounts", "Accounts in the manifest serving.", (),
             lambda: [((), float(current.current.account_count))]),
        ]  # fmt: skip
        for name, documentation, labels, read in table:
            self.metrics.gauge(name, documentation, labels, read)

    async def _sweep_tmp(self, started: float) -> None:
        """Remove what a crash left in the Maildirs' tmp/ (never acknowledged; see store/sweep.py)."""
        began = time.monotonic()
        try:
            removed, freed = await asyncio.get_running_loop().run_in_executor(
                self.executor, sweep_tmp, self.data_dir / "mail", started
            )
        except Exception:
            log.exception("tmp cleanup failed")
            return
        log.info("tmp cleanup removed=%d bytes=%d ms=%.0f", removed, freed, (time.monotonic() - began) * 1000)

    def announce_ready(self) -> None:
        self.write_status()
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")

    async def stop(self) -> None:
        log.info("stopping listeners=%d sessions=%d", len(self.listeners), self._sessions_total())
        self.notifier.notify("STOPPING=1")
        for _spec, server in self.listeners.values():
            server.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while self._sessions_total() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for _spec, server in self.listeners.values():
            with contextlib.suppress(Exception):
                server.close_clients()  # type: ignore[attr-defined]  # Python 3.13+
        self.listeners.clear()
        if self._rechecks is not None:
            self._rechecks.cancel()
        if self.services is not None:
            await self.services.queue.stop()
            await self.services.auth.close()
            if self.services.store.delivery_process is not None:
                await self.services.store.delivery_process.close()
            await self.services.readers.close()
            if self.services.reader_process is not None:
                await self.services.reader_process.close()
        if self.imap is not None:
            await self.imap.close()
        self.executor.shutdown(wait=True)
        self.loader.shutdown(wait=True)
        self.write_status(stopped=True)
        log.info("stopped")

    def _sessions_total(self) -> int:
        return self.services.sessions.total() if self.services else 0

    # -- listeners ---------------------------------------------------------------------------
    async def apply_listeners(self, snapshot: Snapshot) -> None:
        assert self.services is not None
        wanted = listener_specs(snapshot.manifest.server.listeners)
        for name, (spec, server) in list(self.listeners.items()):
            if wanted.get(name) != spec:
                server.close()  # stop accepting; sessions in progress go on to their end
                del self.listeners[name]
                log.info("listener closed name=%s address=%s", name, spec.address)
        self.listener_errors = {k: v for k, v in self.listener_errors.items() if k in wanted}
        for name, spec in wanted.items():
            if name in self.listeners:
                continue
            try:
                server = await self.factories[name](spec)
            except OSError as error:
                self.listener_errors[name] = f"cannot listen on {spec.address}: {error.strerror}"
                log.error("listener failed name=%s address=%s error=%r", name, spec.address, error.strerror)
                continue
            self.listeners[name] = (spec, server)
            self.listener_errors.pop(name, None)
            log.info("listening name=%s address=%s tls=%s", name, spec.address, spec.implicit_tls)

    # -- reload ------------------------------------------------------------------------------
    async def reload(self, trigger: str, *, notify: bool = True) -> bool:
        """Load the manifest again; apply it only when it is valid. True when applied."""
        async with self._reload_lock:
            started = time.monotonic()
            if notify:
                self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                raw = await _read_settled(self.manifest_path)
                loop = asyncio.get_running_loop()
                current = self.holder.current
                if raw is None:
                    raise ManifestError(
                        str(self.manifest_path),
                        [Problem((), "cannot read the manifest (missing or unreadable)")],
                    )
                scripts = current.sieve
                scripts_same = scripts is None or scripts_digest(scripts) == scripts.digest
                if _sha256(raw) == current.revision and scripts_same:
                    self.last_error, self.last_error_at = [], None
                    log.info("reload unchanged trigger=%s revision=%s", trigger, current.revision[:12])
                    self._reload_finished("unchanged")
                    return False
                loaded = await loop.run_in_executor(
                    self.loader,
                    functools.partial(parse_manifest, raw, str(self.manifest_path), file=self.manifest_path),
                )
                snapshot = await loop.run_in_executor(self.loader, build_snapshot, loaded)
                git_commit = await loop.run_in_executor(self.loader, git_revision, self.manifest_path)
            except ManifestError as error:
                self.reloads_rejected += 1
                self.metrics.reloads.labels("rejected").inc()
                self.reloads_finished, self.last_reload_result = self.reloads_finished + 1, "rejected"
                self.last_error, self.last_error_at = error.lines(), time.time()
                for line in error.lines():
                    log.error("reload rejected trigger=%s problem=%s", trigger, line)
                log.error(
                    "reload rejected trigger=%s problems=%d serving=%s",
                    trigger,
                    len(error.problems),
                    self.holder.current.revision[:12],
                )
                self.write_status()
                return False
            finally:
                if notify:
                    self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
            if snapshot.data_dir != self.data_dir:
                log.warning(
                    "reload data_dir changed from=%s to=%s: it applies at the next restart",
                    self.data_dir,
                    snapshot.data_dir,
                )
            self.holder.swap(snapshot)
            logging.getLogger().setLevel(snapshot.manifest.server.log_level.upper())  # applies live
            await loop.run_in_executor(self.loader, write_serving_copy, self.data_dir, raw)
            if self.services is not None:
                # Sessions the new manifest no longer allows end now, not at the next interval.
                self.services.auth.revocations.reloaded(snapshot)
            self.reloads_applied += 1
            self.git_commit = git_commit
            self.last_error, self.last_error_at = [], None
            # Status names the new revision from the moment it serves (listeners follow below).
            self.write_status()
            # The old manifest and snapshot hold cycles that only the cyclic collector frees (and
            # it was paused while the new one was built): collect now, or the next reload of a
            # large manifest runs with three generations in memory instead of two.
            del current, loaded
            await loop.run_in_executor(self.loader, release_memory)
            await self.apply_listeners(snapshot)
            self.log_loaded(
                snapshot, f"reloaded trigger={trigger} ms={(time.monotonic() - started) * 1000:.0f}"
            )
            self._reload_finished("applied")
            if notify:
                self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
            return True

    def _reload_finished(self, result: str) -> None:
        self.metrics.reloads.labels(result).inc()
        self.reloads_finished, self.last_reload_result = self.reloads_finished + 1, result
        self.write_status()

    def log_loaded(self, snapshot: Snapshot, event: str) -> None:
        log.info(
            "manifest %s revision=%s git=%s domains=%d accounts=%d",
            event,
            snapshot.revision[:12],
            (self.git_commit or "-")[:12],
            snapshot.domain_count,
            snapshot.account_count,
        )

    async def watch(self) -> None:
        """Reload when the manifest file changes: in place, by rename, or by a symlink swap; and
        when a Sieve script changes in a directory that held the manifest's scripts at start."""
        path = self.manifest_path.absolute()
        watched = {path.parent}
        if path.is_symlink():
            watched.add(path.resolve().parent)
        scripts = self.holder.current.sieve
        script_directories = {p.parent for p in scripts.compiled} if scripts is not None else set()
        watched |= {d for d in script_directories if d.is_dir()}

        def relevant(change: watchfiles.Change, changed: str) -> bool:
            changed_path = Path(changed)
            if changed_path.name == path.name and changed_path.parent == path.parent:
                return True
            if changed_path.suffix == ".sieve" and changed_path.parent in script_directories:
                return True
            try:
                return changed_path == path.resolve()
            except OSError:
                return False

        async for _changes in watchfiles.awatch(
            *watched,
            watch_filter=relevant,
            debounce=100,
            step=20,
            stop_event=self.stopping,
            recursive=False,
            force_polling=False,
        ):
            await self.reload("file-change")

    # -- status ------------------------------------------------------------------------------
    def status(self, stopped: bool = False) -> dict[str, Any]:
        snapshot = self.holder.current
        return {
            "pid": os.getpid(),
            "state": "stopped" if stopped else "serving",
            "manifest": str(self.manifest_path.absolute()),
            "revision": snapshot.revision,
            "git_commit": self.git_commit,
            "loaded_at": snapshot.loaded_at,
            "last_reload_error": self.last_error,
            "last_reload_error_at": self.last_error_at,
            "listeners": {
                name: {"address": spec.address, "tls": _tls(spec)}
                for name, (spec, _server) in sorted(self.listeners.items())
            },
            "listener_errors": self.listener_errors,
            "domains": snapshot.domain_count,
            "accounts": snapshot.account_count,
            "sessions": self.services.sessions.counts() if self.services else {},
            "process": process_figures(),
            "delivery_process_pid": _pid(self.services.store.delivery_process if self.services else None),
            "reader_process_pid": _pid(self.services.reader_process if self.services else None),
            "fetch_sender_pids": self.imap.senders.pids if self.imap and self.imap.senders else [],
            "reloads": {
                "applied": self.reloads_applied,
                "rejected": self.reloads_rejected,
                "finished": self.reloads_finished,
                "last_result": self.last_reload_result,
            },
            "scanner": self.services.scanner.status(snapshot.filter)
            if self.services and snapshot.filter
            else None,
            "written_at": time.time(),
        }

    def status_line(self) -> str:
        snapshot = self.holder.current
        error = " (last reload rejected)" if self.last_error else ""
        return (
            f"serving {snapshot.revision[:12]}: {snapshot.domain_count} domains, "
            f"{snapshot.account_count} accounts, {len(self.listeners)} listeners{error}"
        )

    def write_status(self, stopped: bool = False) -> None:
        write_status(self.data_dir, self.status(stopped))

    async def watchdog_loop(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop itself: a loop that is stuck sends none, and systemd
        restarts the unit when WatchdogSec= passes without one."""
        while not self.stopping.is_set():
            self.notifier.notify("WATCHDOG=1")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=interval)

    def stall(self) -> None:
        """A test hook (APPLIANCE_TEST_HOOKS=1, SIGUSR2): block the event loop for STALL_SECONDS,
        as a bug would, so a test can see the watchdog keep-alives stop."""
        self.notifier.notify("STATUS=stalling the event loop (test hook)")
        time.sleep(STALL_SECONDS)

    async def status_loop(self) -> None:
        """Keep live counters in the status file fresh (sessions come and go between reloads)."""
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=2.0)
            if not self.stopping.is_set():
                await self.check_scanner()
                self.write_status()

    async def check_scanner(self) -> None:
        """With [filter], ask rspamd whether it is up when no message has for a while."""
        settings = self.holder.current.filter
        if settings is None or self.services is None:
            return
        health = self.services.scanner.health
        last = max(health.last_ok_at or 0.0, health.last_failure_at or 0.0)
        if time.time() - last >= SCANNER_CHECK_INTERVAL:
            await self.services.scanner.ping(settings)


def _tls(spec: ListenerSpec) -> str:
    if spec.name == "metrics":
        return "none"  # plain HTTP
    return "implicit" if spec.implicit_tls else "starttls"


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


async def _read_settled(path: Path, settle: float = 0.05, limit: float = 2.0) -> bytes | None:
    """Wait until the file stops changing (size and mtime stable), so a writer that is still
    writing in place is not read half-way. A torn read would fail validation anyway; this avoids
    logging a spurious error for it."""
    deadline = time.monotonic() + limit
    previous: tuple[int, int] | None = None
    while time.monotonic() < deadline:
        try:
            info = path.stat()
        except OSError:
            return None
        current = (info.st_size, info.st_mtime_ns)
        if current == previous:
            break
        previous = current
        await asyncio.sleep(settle)
    try:
        return path.read_bytes()
    except OSError:
        return None


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    # Nothing from the wire reaches the log raw; the journal gets priorities and keeps the time.
    handler.setFormatter(
        JournalFormatter() if under_journald(handler.stream.fileno()) else EscapingFormatter()
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The format names none of these; not gathering them saves a getpid() system call, a stack
    # walk and a thread lookup per line (the logging HOWTO's "Optimization").
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    logging._srcfile = None
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


async def run(manifest_path: Path) -> int:
    limit_malloc_arenas()
    try:
        raw = manifest_path.read_bytes()
    except OSError as error:
        log.error("manifest rejected problem=%s: cannot read the manifest: %s", manifest_path, error.strerror)
        return 1
    try:
        loaded = parse_manifest(raw, str(manifest_path), file=manifest_path)
    except ManifestError as error:
        for line in error.lines():
            log.error("manifest rejected problem=%s", line)
        return 1
    configure_logging(loaded.manifest.server.log_level)
    server = Server(loaded, manifest_path, raw)
    try:
        await server.start()
    except (OSError, ValueError) as error:
        log.error("start failed error=%s", error)
        return 1
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.stopping.set)
    loop.add_signal_handler(signal.SIGINT, server.stopping.set)
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(server.reload("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if server.services is not None:
        loop.add_signal_handler(signal.SIGUSR1, server.services.queue.flush)  # `appliance queue flush`
    watcher = loop.create_task(server.watch())
    # The watcher needs a moment to arm; an edit made before then would go unseen, so read the
    # file once more after arming (a no-op when it is unchanged) and only then say "ready".
    await asyncio.sleep(0.2)
    await server.reload("start-check", notify=False)
    freeze_live_objects()
    server.announce_ready()
    status = loop.create_task(server.status_loop())
    tasks = [watcher, status]
    interval = watchdog_interval()
    if interval is not None:
        tasks.append(loop.create_task(server.watchdog_loop(interval)))
    if os.environ.get("APPLIANCE_TEST_HOOKS") == "1":
        loop.add_signal_handler(signal.SIGUSR2, server.stall)
    await server.stopping.wait()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await server.stop()
    return 0


def main(manifest_path: Path) -> int:
    configure_logging("info")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(manifest_path))
    return uvloop.run(run(manifest_path))
