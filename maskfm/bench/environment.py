"""Where and how the benchmark ran: CPU/GPU names, load, other processes' CPU use, peak
memory, and the command line, all recorded in ``bench.json``."""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

MIB = 1024 * 1024


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024


class PeakMemory:
    """Peak memory of one section: CUDA ``max_memory_allocated`` (reset at the start) on a GPU,
    else the process's peak RSS, which cannot be reset (so on CPU it is the peak *so far*)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss"

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def read_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB
        return peak_rss_mib()


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def describe_environment(device: torch.device, precision) -> dict:
    """``bench.json``'s ``environment`` at the start (``torch.get_num_threads`` as set now)."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "precision": str(precision),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        # Other processes on the machine distort CPU timings: check the load was ~0.
        "loadavg_at_start": load_average(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


class OtherCpuUse:
    """CPUs kept busy by *other* processes between ``start()`` and ``stop()`` (Linux only).

    Machine-wide busy time from ``/proc/stat`` minus this process's own CPU time, divided by
    the wall time: 0.0 means the benchmark had the machine to itself, 1.0 that another
    process kept one core busy on average (CPU timings are then not trustworthy).
    """

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
            machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), machine, usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall = end[0] - self._start[0]
        other = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return round(max(other, 0.0) / wall, 3)


def hydra_overrides() -> list[str] | None:
    """The command-line overrides of the running Hydra job (None outside ``@hydra.main``)."""
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    return None


def command_line() -> str:
    """How this process was started, e.g. ``python -m maskfm.bench +experiment=mae``."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).resolve() == Path(__file__).with_name("__main__.py").resolve():
        argv[0:1] = ["-m", "maskfm.bench"]
    return " ".join(["python", *argv])
