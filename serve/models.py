"""The models being served: which versions, their engines and batchers, and reloads.

Routing is a dict replaced whole on every change, so a request sees either the old set of
versions or the new one. A version is loaded and warmed up before it is routed to; a version
that is no longer wanted is taken out of routing first and closed after its queue drains.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable

from ganserve.serve import backends, repository
from ganserve.serve.backends import Backend, EngineOptions, cpu
from ganserve.serve.batcher import Batcher, EngineThreads, batch_seconds
from ganserve.serve.config import ServerConfig
from ganserve.serve.errors import ModelLoadError, ModelNotFoundError, shown
from ganserve.serve.metadata import (
    FP16_MODEL_FILE,
    METADATA_FILE,
    MODEL_FILE,
    PLAN_FILE,
    ModelMetadata,
)
from ganserve.serve.metrics import ServerMetrics

LOGGER = logging.getLogger(__name__)


class State(enum.Enum):
    """Lifecycle state of one model version; values match ganserve.v1.ModelState."""

    READY = 1
    FAILED = 2
    UNLOADED = 3


@dataclasses.dataclass(frozen=True)
class Status:
    """One model version's state, as ListModels and ReloadModels report it."""

    name: str
    version: str
    state: State
    message: str = ""
    backend: str = ""
    precision: str = ""  # of a READY version's engine, as ModelInfo.precision


class Calls:
    """The calls routed to a version and not yet answered (the servicer counts them), and what
    runs once the last has ended after the version was retired: a stream can still be sending
    frames its client has not read when the version's queue has drained."""

    __slots__ = ("_on_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._on_idle: Callable[[], None] | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0 and self._on_idle is not None:
            callback, self._on_idle = self._on_idle, None
            callback()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` now if no call is in flight, else when the last one ends."""
        if self.count == 0:
            callback()
        else:
            self._on_idle = callback


@dataclasses.dataclass(frozen=True)
class ServedVersion:
    """A loaded, warmed-up model version and the batcher in front of its engines."""

    metadata: ModelMetadata
    backend: Backend
    batcher: Batcher
    fingerprint: tuple[int, ...]
    precision: str = "fp32"  # of the engine: ModelInfo.precision
    calls: Calls = dataclasses.field(default_factory=Calls, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.metadata.name, self.metadata.version

    def status(self) -> Status:
        return Status(*self.key, State.READY, backend=self.backend.value, precision=self.precision)


def _fingerprint(path: pathlib.Path) -> tuple[int, ...]:
    """The version folder's identity and the sizes and mtimes of the files that define it, to
    notice changes on reload (`export-gan --force` swaps in a new folder). A file that cannot
    be read (missing, or an I/O error on a network mount) counts as changed: loading it again
    says what is wrong."""
    try:
        folder = path.stat()
        out: list[int] = [folder.st_dev, folder.st_ino]
    except OSError:
        out = [-1, -1]
    for name in (MODEL_FILE, FP16_MODEL_FILE, METADATA_FILE, PLAN_FILE):
        try:
            stat = (path / name).stat()
        except OSError:
            out += [-1, -1]
        else:
            out += [stat.st_size, stat.st_mtime_ns]
    return tuple(out)


class ModelManager:
    """Loads model versions from the repository and routes requests to them."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._routes: dict[str, dict[str, ServedVersion]] = {}
        self._failed: dict[tuple[str, str], str] = {}
        self._default: str | None = config.default_model
        # The models a reload last warned about (`_warn_restart_needs_default`).
        self._warned_models: tuple[str, ...] = ()
        self._lock = asyncio.Lock()
        # Versions a reload has retired, closing once their queues drain: task -> batcher.
        self._retiring: dict[asyncio.Task[None], Batcher] = {}
        self._draining = False  # set by the shutdown: reloads load nothing more
        # Loads run on a daemon thread: a SIGTERM during a long load (a TensorRT build) need
        # not wait for it at exit.
        self._loader = EngineThreads(1, "model-load")
        self._reloads: set[asyncio.Task[list[Status]]] = set()

    # --- routing (event loop, hot path) ---

    @property
    def default_model(self) -> str | None:
        return self._default

    def names(self) -> list[str]:
        return sorted(self._routes)

    def versions(self, name: str) -> list[ServedVersion]:
        """Served versions of ``name``, oldest first."""
        return sorted(self._routes.get(name, {}).values(), key=lambda v: int(v.metadata.version))

    def served_name(self, name: str) -> str | None:
        """The model ``name`` (or the default, for "") routes to, if one by that name serves."""
        name = name or self._default or ""
        return name if name in self._routes else None

    def resolve(self, name: str, version: str = "") -> ServedVersion:
        """The version serving (name or default, version or newest); NOT_FOUND names options."""
        versions = self._routes.get(name or self._default or "")
        if versions is None:
            available = ", ".join(sorted(self._routes)) or "none"
            raise ModelNotFoundError(f"model {shown(name)} not found; available: {available}")
        if not version:
            return versions[max(versions, key=int)]
        served = versions.get(version)
        if served is None:
            listed = ", ".join(sorted(versions, key=int))
            raise ModelNotFoundError(
                f"model {shown(name or self._default)} version {shown(version)} is not served; "
                f"served versions: {listed}"
            )
        return served

    # --- loading ---

    def _wanted(self) -> tuple[dict[tuple[str, str], pathlib.Path], dict[tuple[str, str], str]]:
        """(name, version) -> folder for every version that should serve; plus errors."""
        root = self._config.model_repository
        wanted, errors = {}, {}
        for name in repository.model_names(root):
            found = repository.versions(root, name)
            pinned = self._config.model(name).versions
            for v in pinned or found[-1:]:
                if v in found:
                    wanted[(name, str(v))] = root / name / str(v)
                else:
                    errors[(name, str(v))] = f"pinned version {v} is not in {root / name}"
        return wanted, errors

    def _load(self, name: str, version: str) -> ServedVersion:
        """Worker thread: open, check and warm up one version (all engine instances)."""
        started = time.monotonic()
        config = self._config
        # Before any file is read (metadata.json included): a file replaced while this load
        # runs differs from it, so the next reload loads the new one instead of keeping what
        # was read here.
        fingerprint = _fingerprint(config.model_repository / name / version)
        opened = repository.open_version(config.model_repository, name, int(version))
        model_config = config.model(name)
        choices = backends.candidates(model_config.backend, opened.path)
        for i, backend in enumerate(choices):
            try:
                engines, image_s, spawn = self._open_engines(
                    opened, backend, model_config.precision, fingerprint
                )
                break
            except ModelLoadError as exc:
                if i == len(choices) - 1:
                    raise
                # Only under auto: an explicit backend has one candidate.
                LOGGER.warning(
                    "model %s v%s: auto backend: %s failed to load (%s); trying %s",
                    name,
                    version,
                    backend.value,
                    exc,
                    choices[i + 1].value,
                )
        batching = config.batching
        if config.warmup:  # timings of cold engines say nothing
            try:
                self._check_batch_time(engines[0])
            except BaseException:
                for engine in engines:
                    engine.close()
                raise
        batcher = Batcher(engines, batching, self._metrics, spawn, image_s=image_s)
        seconds = time.monotonic() - started
        self._metrics.model_load_duration.labels(name, version).set(seconds)
        LOGGER.info(
            "loaded model %s version %s on %s in %.2fs%s",
            name,
            version,
            backend.value,
            seconds,
            f"; a second batch starts beside a running one from {batcher.parallel_min} images"
            if image_s and batching.instances > 1 and batching.parallel_batch_us
            else "",
        )
        if backend is Backend.TENSORRT:  # the plan's own, as export-gan built it
            precision = str(opened.metadata.extra.get("tensorrt", {}).get("precision", "fp32"))
        else:
            precision = model_config.precision
        return ServedVersion(opened.metadata, backend, batcher, fingerprint, precision)

    def _check_batch_time(self, engine: backends.Engine) -> None:
        """Refuse a version whose full batch cannot finish within the engine timeout: each
        one would fail with DEADLINE_EXCEEDED and cost its instance, and no retry could ever
        succeed. Timed as the timeout counts it (latents, engine, encoding); a time at or over
        the timeout is taken again, so a one-off stall during the load does not fail it."""
        batching, m = self._config.batching, engine.metadata
        timeout = batching.engine_timeout_s
        try:
            seconds = batch_seconds(engine, batching)
            if seconds >= timeout:
                seconds = min(seconds, batch_seconds(engine, batching))
        except Exception as exc:  # ORT and TensorRT raise many unrelated types
            raise ModelLoadError(
                f"model {m.name!r} v{m.version}: timing a full batch failed ({exc})"
            ) from exc
        if seconds >= timeout:
            raise ModelLoadError(
                f"model {m.name!r} v{m.version}: a full batch of {batching.max_batch_size} "
                f"images took {seconds:.3g}s at load, at or over the engine timeout "
                f"({timeout:g}s), so every full batch would fail; raise --engine-timeout "
                f"(engine_timeout) above {seconds:.3g}s, or lower --max-batch-size "
                "(max_batch_size)"
            )

    def _open_engines(
        self,
        opened: repository.ModelVersionPath,
        backend: Backend,
        precision: str,
        fingerprint: tuple[int, ...],
    ) -> tuple[list[backends.Engine], float | None, Callable[[], backends.Engine]]:
        """The version's engine instances on ``backend``, checked and warmed; their seconds
        per image (None without warm-up); and the function that builds one more (a
        replacement for a hung one)."""
        config, batching = self._config, self._config.batching
        model_file = FP16_MODEL_FILE if precision == "fp16" else MODEL_FILE
        if backend is not Backend.TENSORRT and not (opened.path / model_file).is_file():
            raise ModelLoadError(
                f"{opened.path}: precision fp16 needs {model_file}; export it with "
                "`export-gan --fp16-onnx`"
            )
        options = EngineOptions(
            model_file=model_file,
            intra_op_threads=config.intra_op_threads,
            max_batch_size=batching.max_batch_size,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            cache_dir=config.engine_cache_dir,
        )
        if backend is Backend.ONNXRUNTIME_CPU and not options.intra_op_threads:
            # Auto: 1 thread, or this instance's share of the cores, whichever runs faster.
            share = max(1, len(os.sched_getaffinity(0)) // batching.instances)
            threads = cpu.tune_threads(opened.path, opened.metadata, options, [1, share])
            options = dataclasses.replace(options, intra_op_threads=threads)
        sizes = self._warmup_sizes(backend) if config.warmup else []

        def spawn() -> backends.Engine:
            # The engines open their files by path. Once those changed on disk (export-gan
            # --force), a new instance would serve other weights under this version's name
            # beside the old ones: the reload that the change brings serves the new files.
            if engines and _fingerprint(opened.path) != fingerprint:
                raise ModelLoadError(
                    f"{opened.path}: its files changed on disk since it was loaded; no new "
                    "instance is built from them (a reload serves the new files)"
                )
            engine = backends.create_engine(opened.path, opened.metadata, backend, options)
            try:
                backends.check_classes(engine)
                backends.warmup(engine, sizes)
            except BaseException:
                engine.close()
                raise
            return engine

        engines: list[backends.Engine] = []
        image_s = None
        try:
            for _ in range(batching.instances):
                engines.append(spawn())
            if sizes:  # warmed sizes only; a full queue's refusals say when to retry from it
                image_s = backends.image_seconds(engines[0], max(sizes))
        except BaseException:
            for engine in engines:
                engine.close()
            raise
        return engines, image_s, spawn

    def _warmup_sizes(self, backend: Backend) -> list[int]:
        batching = self._config.batching
        if batching.preferred_batch_sizes:
            return list(batching.preferred_batch_sizes)
        if backend is Backend.ONNXRUNTIME_CPU:  # CPU kernels do not specialise per shape
            return [1, batching.max_batch_size]
        return list(range(1, batching.max_batch_size + 1))

    async def start(self) -> None:
        """Load every wanted version; any failure stops start-up with its message."""
        async with self._lock:
            wanted, errors = self._wanted()
            if errors:
                raise ModelLoadError("; ".join(errors.values()))
            if not wanted:
                raise ModelLoadError(
                    f"model repository {self._config.model_repository} holds no "
                    "<name>/<version>/ folders"
                )
            names = sorted({name for name, _ in wanted})
            configured = sorted(set(self._config.models) - set(names))
            if configured:
                raise ModelLoadError(
                    f"the config has settings for model(s) {', '.join(configured)} that "
                    f"{self._config.model_repository} does not hold (found: {', '.join(names)})"
                )
            if self._default is None:
                if len(names) > 1:
                    raise ModelLoadError(
                        f"model repository {self._config.model_repository} holds several "
                        f"models ({', '.join(names)}); choose one with --default-model"
                    )
                self._default = names[0]
            elif self._default not in names:
                raise ModelLoadError(
                    f"--default-model {self._default!r} is not in "
                    f"{self._config.model_repository} (found: {', '.join(names)})"
                )
            loop = asyncio.get_running_loop()
            routes: dict[str, dict[str, ServedVersion]] = {}
            try:
                for name, version in sorted(wanted):
                    served = await loop.run_in_executor(self._loader, self._load, name, version)
                    routes.setdefault(name, {})[version] = served
                    served.batcher.start()
            except BaseException:
                await self._close_all(routes, 0)
                raise
            self._routes = routes
            self._publish_info()

    async def reload(self) -> list[Status]:
        """Bring the served versions in line with the repository; return what changed.

        New or changed versions are loaded before they are routed to; a version that fails to
        load is reported and whatever served before keeps serving. A reload, once begun, runs
        to its end even when its caller goes away (an admin call past its deadline): stopped
        half-way, the versions it had loaded would be neither served nor closed.
        """
        task = asyncio.get_running_loop().create_task(self._reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        return await asyncio.shield(task)

    async def _reload(self) -> list[Status]:
        async with self._lock:
            if self._draining:
                return [self._refuse_reload()]
            served_before = self._routes
            loaded: list[ServedVersion] = []
            try:
                return await self._reload_locked(loaded)
            except Exception as exc:  # nothing half-done may stay behind
                if self._routes is served_before:  # not published: what loaded serves nothing
                    await asyncio.gather(*(v.batcher.close(0) for v in loaded))
                self._metrics.reloads.labels("failed").inc()
                LOGGER.exception("reload failed; the versions served before still serve")
                return [Status("", "", State.FAILED, f"reload failed: {type(exc).__name__}: {exc}")]

    async def _reload_locked(self, loaded: list[ServedVersion]) -> list[Status]:
        """A reload, under the lock; each version it loads is appended to ``loaded`` at once."""
        changes: list[Status] = []
        try:
            wanted, errors = self._wanted()
        except (ModelLoadError, OSError) as exc:  # the folder vanished or is unreadable
            self._metrics.reloads.labels("failed").inc()
            LOGGER.error("reload failed: %s", exc)
            return [Status("", "", State.FAILED, str(exc))]
        routes = {name: dict(versions) for name, versions in self._routes.items()}
        # A model whose folder lost every version (deleted, unmounted) keeps serving from
        # memory: a reload never takes a model down because its files went missing.
        listed = {name for name, _ in (*wanted, *errors)}
        gone = sorted(set(routes) - listed)
        # Forget failures of versions the repository no longer has, but not those of a model
        # still served from memory: each reload reports it again, and must not count it again.
        self._failed = {
            k: m
            for k, m in self._failed.items()
            if k in wanted or k in errors or (k[0] in gone and k[1] in routes[k[0]])
        }
        for (name, version), message in errors.items():
            changes.append(self._fail(name, version, message))
        root = self._config.model_repository
        for name in gone:
            for version in routes[name]:
                message = (
                    f"{root / name} holds no version folders any more; still serving "
                    f"version {version} from memory"
                )
                changes.append(self._fail(name, version, message))
        # Old versions close only once the new routes are published: until then requests
        # still reach them, and a closing batcher refuses them.
        retiring: list[ServedVersion] = []
        loop = asyncio.get_running_loop()
        for (name, version), path in sorted(wanted.items()):
            current = routes.get(name, {}).get(version)
            if current is not None and current.fingerprint == _fingerprint(path):
                self._failed.pop((name, version), None)  # the served files are back
                continue
            if self._draining:  # the shutdown began while earlier versions loaded
                break
            try:
                served = await loop.run_in_executor(self._loader, self._load, name, version)
            except Exception as exc:  # any load failure leaves the old version serving
                changes.append(self._fail(name, version, str(exc)))
                continue
            loaded.append(served)
            self._failed.pop((name, version), None)
            served.batcher.start()
            routes.setdefault(name, {})[version] = served
            if current is not None:
                retiring.append(current)
            changes.append(served.status())
        if self._draining:  # nothing loaded here may serve: the drain has closed the rest
            await asyncio.gather(*(v.batcher.close(0) for v in loaded))
            return [self._refuse_reload()]
        for name in set(routes) - set(gone):
            for version in list(routes[name]):
                # A failed newer version never unloads the version that still serves, nor
                # does a pinned version whose folder went missing (it serves from memory).
                if (
                    (name, version) in wanted
                    or (name, version) in errors
                    or self._only_survivor(routes, wanted, errors, name)
                ):
                    continue
                retiring.append(routes[name].pop(version))
                changes.append(Status(name, version, State.UNLOADED))
            if not routes[name]:
                del routes[name]
        self._routes = routes
        for served in retiring:
            self._retire(served)
        self._publish_info()
        self._warn_restart_needs_default(sorted({name for name, _ in wanted}))
        self._metrics.reloads.labels("ok").inc()
        LOGGER.info(
            "reload: %s",
            ", ".join(f"{c.name} v{c.version} {c.state.name}" for c in changes) or "no changes",
        )
        return changes

    def _warn_restart_needs_default(self, names: list[str]) -> None:
        """A reload may leave the repository holding several models where the server started
        with one and no --default-model: unnamed requests still go to that one, but a restart
        with the same settings refuses to start (`start`), a crash loop under Kubernetes. Say
        so once for each such set of models, not on every reload."""
        if self._config.default_model is not None or len(names) < 2:
            self._warned_models = ()
            return
        if tuple(names) == self._warned_models:
            return
        self._warned_models = tuple(names)
        LOGGER.warning(
            "model repository %s now holds several models (%s) and no --default-model is set: "
            "requests that name no model still go to %s, but a restart will refuse to start "
            "without --default-model %s (default_model in the config file); set it now",
            self._config.model_repository,
            ", ".join(names),
            self._default,
            self._default,
        )

    def _only_survivor(self, routes: dict, wanted: dict, errors: dict, name: str) -> bool:
        """True when ``name`` would lose its last version although the repository still lists
        it (wanted, or pinned versions that failed)."""
        still_wanted = any(n == name for n, _ in (*wanted, *errors))
        loaded_wanted = any((name, v) in wanted for v in routes[name])
        return still_wanted and not loaded_wanted

    def _fail(self, name: str, version: str, message: str) -> Status:
        """Record a version as FAILED. Metered once per failure: later reloads that find the
        same failure report it again but do not count it again."""
        LOGGER.error("model %s version %s failed to load: %s", name, version, message)
        if self._failed.get((name, version)) != message:
            self._metrics.model_load_failures.labels(name).inc()
        self._failed[(name, version)] = message
        return Status(name, version, State.FAILED, message)

    def _retire(self, served: ServedVersion) -> None:
        """Close a version that no longer receives requests, once its queue has drained: it
        finishes what it accepted, however long that takes (each call's own deadline still
        applies). A shutdown cuts it short (`close`), and so does a version whose engines stop
        answering: no batch started or ended for an engine timeout plus --drain-grace."""
        name, version = served.key
        self._metrics.model_info.remove(name, version, served.backend.value)
        stall_s = self._config.batching.engine_timeout_s + self._config.drain_grace_s
        task = asyncio.get_running_loop().create_task(
            served.batcher.close(math.inf, stall_s=stall_s)
        )
        self._retiring[task] = served.batcher
        task.add_done_callback(lambda done: self._retiring.pop(done, None))
        # Its gauges go when its last call has ended too, not while a stream still sends.
        task.add_done_callback(
            lambda _: served.calls.when_idle(lambda: self._forget(name, version))
        )

    def _forget(self, name: str, version: str) -> None:
        """Drop a retired version's gauges, unless the same version serves again (its files
        changed and it was reloaded): the new instance reports under the same labels."""
        if version not in self._routes.get(name, {}):
            self._metrics.forget_version(name, version)

    def _publish_info(self) -> None:
        for versions in self._routes.values():
            for served in versions.values():
                name, version = served.key
                self._metrics.model_info.labels(name, version, served.backend.value).set(1)

    def statuses(self) -> list[Status]:
        out = [v.status() for versions in self._routes.values() for v in versions.values()]
        out += [Status(n, v, State.FAILED, m) for (n, v), m in self._failed.items()]
        return sorted(out, key=lambda s: (s.name, int(s.version or 0)))

    # --- shutdown ---

    def _refuse_reload(self) -> Status:
        self._metrics.reloads.labels("failed").inc()
        LOGGER.warning("reload refused: the server is draining")
        return Status("", "", State.FAILED, "the server is draining; nothing was reloaded")

    def stop_accepting_and_drain(self, grace_s: float) -> list[asyncio.Future]:
        """Close every batcher (they refuse new work at once and drain); return the waits.
        From now on a reload loads nothing: a fresh version would take calls after the drain
        began, and never be closed."""
        self._draining = True
        return [
            asyncio.ensure_future(v.batcher.close(grace_s))
            for versions in self._routes.values()
            for v in versions.values()
        ]

    async def close(self, grace_s: float) -> None:
        """Drain every version, those a reload is retiring included, within one grace."""
        deadline = time.monotonic() + grace_s
        for batcher in self._retiring.values():
            batcher.hurry(grace_s)
        await asyncio.gather(*self.stop_accepting_and_drain(grace_s))
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=max(0.0, deadline - time.monotonic()))

    @staticmethod
    async def _close_all(routes: dict[str, dict[str, ServedVersion]], grace_s: float) -> None:
        await asyncio.gather(
            *(v.batcher.close(grace_s) for versions in routes.values() for v in versions.values())
        )
