"""GPU utilisation and memory as Prometheus gauges, read from NVML at scrape time.

NVML comes from the optional ``nvidia-ml-py`` package (module ``pynvml``); without it, or
without a GPU, nothing is registered and the server runs as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import prometheus_client as prom
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LOGGER = logging.getLogger(__name__)

LABELS = ("gpu", "name")
_FAMILIES = (
    (
        "ganserve_gpu_utilization_ratio",
        "Fraction of the last NVML sample period (1/6 s to 1 s) in which a kernel ran on the GPU.",
    ),
    ("ganserve_gpu_memory_used_bytes", "GPU memory in use, by every process on the GPU."),
    ("ganserve_gpu_memory_total_bytes", "GPU memory installed."),
)


def register_gpu_metrics(registry: prom.CollectorRegistry) -> bool:
    """Register per-GPU utilisation and memory gauges on ``registry`` if NVML is installed and
    sees at least one GPU; return whether it did. Never raises for a missing NVML or GPU."""
    try:
        import pynvml
    except ImportError:
        LOGGER.debug("no GPU metrics: nvidia-ml-py (pynvml) is not installed")
        return False
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ... on CPU hosts
        LOGGER.debug("no GPU metrics: NVML does not initialise (%s)", exc)
        return False
    try:
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:
        LOGGER.debug("no GPU metrics: NVML cannot count GPUs (%s)", exc)
        count = 0
    if count < 1:
        LOGGER.debug("no GPU metrics: NVML sees no GPU")
        _shutdown(pynvml)
        return False
    # NVML stays initialised for the life of the process: the collector reads it on every
    # scrape.
    registry.register(NvmlCollector(pynvml))
    LOGGER.info("exporting metrics of %d GPU(s) from NVML", count)
    return True


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as exc:
        LOGGER.debug("nvmlShutdown failed: %s", exc)


class NvmlCollector(Collector):
    """Reads every GPU's utilisation and memory from NVML when Prometheus scrapes.

    A GPU whose query fails is left out of that scrape (and logged once until it recovers):
    GPU telemetry must never fail the scrape of the server's own metrics.
    """

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._failing: set[int] = set()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The metric names, without calling NVML (the registry checks them for clashes)."""
        for name, documentation in _FAMILIES:
            yield GaugeMetricFamily(name, documentation, labels=LABELS)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per GPU of each gauge, labelled with the GPU's index and name."""
        families = [GaugeMetricFamily(n, d, labels=LABELS) for n, d in _FAMILIES]
        utilization, used, total = families
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            LOGGER.warning("NVML cannot count GPUs; no GPU metrics in this scrape: %s", exc)
            count = 0
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = _text(nvml.nvmlDeviceGetName(handle))
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # NVMLError_GpuIsLost, _Unknown, ...: skip this GPU only
                if index not in self._failing:
                    LOGGER.warning("NVML query of GPU %d failed; leaving it out: %s", index, exc)
                    self._failing.add(index)
                continue
            if index in self._failing:
                LOGGER.info("NVML query of GPU %d works again", index)
                self._failing.discard(index)
            labels = [str(index), name]
            # NVML reports utilisation in percent.
            utilization.add_metric(labels, rates.gpu / 100.0)
            used.add_metric(labels, float(memory.used))
            total.add_metric(labels, float(memory.total))
        yield from families


def _text(value: bytes | str) -> str:
    """NVML strings are bytes in older nvidia-ml-py releases and str in newer ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value
