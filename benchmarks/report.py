"""From one run's results: the project's speed targets with their status, the Markdown report and the plot."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import Results

PASS, NEAR, FAIL, NA = "pass", "near", "FAIL", "n/a"


def fmt_time(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs" if seconds >= 1e-5 else f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(per_call: float | None) -> str:
    return "-" if not per_call else f"{1 / per_call:,.0f} calls/s"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MiB"


# -- targets -----------------------------------------------------------------------------------------------------


def targets(results: Results) -> list[dict[str, Any]]:
    """One row per speed target: what was measured, the ratio, and pass / near / FAIL / n/a."""
    rows: list[dict[str, Any]] = []
    med, p99 = results.median, results.p99

    def row(what: str, target: str, measured: str, ratio: float | None, status: str) -> None:
        rows.append({"what": what, "target": target, "measured": measured, "ratio": ratio, "status": status})

    def compare(
        what: str,
        target: str,
        ours: float | None,
        theirs: float | None,
        limit: float,
        near: float | None = None,
        show: Callable[[float | None], str] = fmt_time,
        invert: bool = False,
    ) -> None:
        """``ours / theirs <= limit`` (or ``theirs / ours >= limit`` when ``invert``: rates from per-call times)."""
        if ours is None or theirs is None:
            row(what, target, "not measured", None, NA)
            return
        ratio = theirs / ours if invert else ours / theirs
        good = ratio >= limit if invert else ratio <= limit
        close = near is not None and (ratio <= near)
        status = PASS if good else NEAR if close else FAIL
        row(what, target, f"{show(ours)} vs {show(theirs)}", ratio, status)

    compare(
        "hot call, small args, sync proxy: median",
        "<= 1.3 x raw pyzmq (not done above 1.5 x)",
        med("hot.wb_magic"),
        med("hot.pyzmq"),
        1.3,
        near=1.5,
    )
    for peer, label in (("rpyc", "RPyC"), ("pyro5", "Pyro5"), ("process_pool", "ProcessPoolExecutor")):
        compare(f"hot call: median vs {label}", f"faster than {label}", med("hot.wb_magic"), med(f"hot.{peer}"), 1.0)
    compare("hot call: p99", "<= 2 x raw pyzmq p99", p99("hot.wb_magic"), p99("hot.pyzmq"), 2.0)
    for n in (1, 2):
        compare(
            f"pipelined async calls, {n} worker{'s' if n > 1 else ''}",
            ">= 0.5 x raw pyzmq pipelined (calls/s)",
            med(f"pipelined{n}.wb_magic"),
            med(f"pipelined{n}.pyzmq"),
            0.5,
            show=fmt_rate,
            invert=True,
        )
    compare(
        "worker-to-worker call through the broker",
        "<= 2.2 x a direct hot call",
        med("w2w.inner"),
        med("w2w.direct"),
        2.2,
    )
    size = results.get("payload.bytes") or results.get("payload.pyzmq")
    mib = f"{size.extra.get('bytes', 0) / 2**20:g} MiB" if size is not None else "64 MiB"
    for kind in ("bytes", "numpy"):
        compare(
            f"{mib} {'bytes' if kind == 'bytes' else 'numpy array'}, round trip",
            "<= 1.5 x raw pyzmq multipart",
            med(f"payload.{kind}"),
            med("payload.pyzmq"),
            1.5,
        )
    compare(
        "first call to a new worker, no warm pool",
        '<= 2 x python -c "import zmq"',
        med("startup.wb_cold"),
        med("startup.import_zmq"),
        2.0,
    )
    if med("startup.ipykernel") is not None and rows[-1]["status"] != NA:
        rows[-1]["measured"] += f" (ipykernel: {fmt_time(med('startup.ipykernel'))})"
    warm = med("startup.wb_warm")
    if warm is None:
        row(
            "first call with the warm pool",
            "<= 20 ms + the module's import",
            results.skipped.get("startup.wb_warm", "not measured"),
            None,
            NA,
        )
    else:
        allowed = 0.020 + float(results.facts.get("trivial_module_import_s", 0.0))
        row(
            "first call with the warm pool",
            "<= 20 ms + the module's import",
            f"{fmt_time(warm)} (allowed {fmt_time(allowed)})",
            warm / allowed,
            PASS if warm <= allowed else FAIL,
        )
    idle = results.facts.get("wb_idle_worker")
    ipk = results.facts.get("ipykernel_idle") or {}
    for key, limit, label in (("rss_mib", 25.0, "RSS"), ("uss_mib", 12.0, "USS")):
        if not idle:
            row(f"idle worker memory: {label}", f"<= {limit:g} MiB", "not measured", None, NA)
            continue
        value = idle[key]
        beside = f" (ipykernel: {_mib(ipk.get(key))})" if ipk else ""
        row(
            f"idle worker memory: {label}",
            f"<= {limit:g} MiB",
            f"{_mib(value)}{beside}",
            value / limit,
            PASS if value <= limit else FAIL,
        )
    many = results.facts.get("many_workers")
    if many:
        row(
            f"{many['workers']} workers started at once",
            "all answer; report time and memory",
            f"{many['answered']}/{many['workers']} answered in {fmt_time(many['total_s'])}; workers "
            f"{many['worker_rss_mib_total']:.0f} MiB RSS, {many['worker_uss_mib_total']:.0f} MiB USS in all",
            None,
            PASS if many["answered"] == many["workers"] else FAIL,
        )
    else:
        row("100 workers started at once", "all answer; report time and memory", "not measured", None, NA)
    get_cost = med("cleaner.get")
    if get_cost is None:
        row(
            "cleaner's memory check with 100 workers",
            "report its cost per call; not on the hot path",
            results.skipped.get("cleaner", "not measured"),
            None,
            NA,
        )
    else:
        hot_with, hot_without = med("cleaner.hot"), med("many.hot")
        check = next((s for s in results.series.values() if s.group == "cleaner" and ".memory" in s.id), None)
        check_text = f"its memory check {fmt_time(check.summary['median'])} (on its own thread); " if check else ""
        budget = max(10e-6, 0.05 * (hot_without or 0.0))
        row(
            "cleaner's memory check with 100 workers",
            "report its cost per call; not on the hot path (a 'get' event under 10 µs)",
            f"{check_text}per call: a 'get' event {fmt_time(get_cost)}; hot call median {fmt_time(hot_with)} "
            f"with the cleaner, {fmt_time(hot_without)} without (p99 {fmt_time(p99('cleaner.hot'))} / "
            f"{fmt_time(p99('many.hot'))})",
            None if not hot_without or not hot_with else hot_with / hot_without,
            PASS if get_cost <= budget else FAIL,
        )
    _lane_targets(results, compare, row)
    return rows


def _lane_targets(results: Results, compare: Callable[..., None], row: Callable[..., None]) -> None:
    """The call lane's targets (issue 12): against a multiprocessing pipe and raw pyzmq, and the lane against
    the same run's Jupyter channels (``lane=False``) for what must not get worse."""
    med, p99 = results.median, results.p99
    compare("lane: hot call median", "<= 1.5 x multiprocessing pipe", med("hot.wb_magic"), med("hot.mp_pipe"), 1.5,
            near=2.0)  # fmt: skip
    compare("lane: hot call median", "<= 0.6 x raw pyzmq", med("hot.wb_magic"), med("hot.pyzmq"), 0.6)
    compare("lane: hot call median", "beside lane=False", med("hot.wb_magic"), med("hot.wb_magic_jupyter"), 1.0)
    compare("lane: hot call p99", "<= 1.5 x raw pyzmq p99", p99("hot.wb_magic"), p99("hot.pyzmq"), 1.5)
    compare(
        "lane: pipelined async calls, 1 worker",
        ">= 1.0 x raw pyzmq pipelined (calls/s; not done below 0.5 x)",
        med("pipelined1.wb_magic"),
        med("pipelined1.pyzmq"),
        1.0,
        show=fmt_rate,
        invert=True,
    )
    compare("lane: host -> A -> B", "<= 3 x a direct call on the lane", med("w2w.outer"), med("w2w.direct"), 3.0)
    compare("lane: host -> A -> B", "<= 2 x one raw pyzmq round trip", med("w2w.outer"), med("hot.pyzmq"), 2.0)
    for what, ours, theirs in (
        ("first call, new broker", "startup.wb_cold", "startup.wb_cold_jupyter"),
        ("first call, live broker", "startup.wb_live", "startup.wb_live_jupyter"),
        ("hot call with 100 workers alive", "many.hot", "many.hot_jupyter"),
    ):
        compare(f"lane: {what}", "within 10% of lane=False", med(ours), med(theirs), 1.1)
    for fact, key, what in (
        ("wb_idle_worker", "uss_mib", "idle worker USS"),
        ("many_workers", "worker_uss_mib_total", "100 workers' USS in all"),
    ):
        lane, jupyter = results.facts.get(fact), results.facts.get(fact + "_jupyter")
        if not lane or not jupyter:
            row(f"lane: {what}", "within 10% of lane=False", "not measured", None, NA)
            continue
        ratio = lane[key] / jupyter[key]
        row(f"lane: {what}", "within 10% of lane=False", f"{_mib(lane[key])} vs {_mib(jupyter[key])}", ratio,
            PASS if ratio <= 1.1 else FAIL)  # fmt: skip


# -- Markdown ----------------------------------------------------------------------------------------------------


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return out


def _series_table(results: Results, group: str, floor: str | None, rate: bool = False) -> list[str]:
    found = [s for s in results.series.values() if s.group == group and s.samples]
    if not found:
        return []
    base = results.median(floor) if floor else None
    lines = []
    for s in sorted(found, key=lambda s: s.summary["median"]):
        summary = s.summary
        cells = [s.label]
        if rate:
            cells += [fmt_rate(summary["median"]), fmt_time(summary["median"]), fmt_time(summary["p99"])]
        else:
            cells += [fmt_time(summary["median"]), fmt_time(summary["p99"])]
        if floor:
            if rate:
                cells.append(f"{base / summary['median']:.2f}" if base else "-")
            else:
                cells.append(f"{summary['median'] / base:.2f}" if base else "-")
        cells.append(str(summary["n"]))
        lines.append(cells)
    header = ["", "median", "p99"]
    if rate:
        header = ["", "throughput (median)", "per call, median", "per call, p99"]
    if floor:
        header.append("x floor (rate)" if rate else "x floor (median)")
    header.append("n")
    return _table(header, lines) + [""]


def markdown(results: Results, rows: list[dict[str, Any]], plot: str | None) -> str:
    m = results.to_json()["machine"]
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.run"
        + (" --quick" if results.quick else "")
        + "`): wb-magic and its peers doing the same work, side by side in one run. "
        "The raw samples are in [benchmarks.json](benchmarks.json).",
        "",
        f"**Machine**: {m['cpu']}, {m['cores']} cores, {m.get('memory_gib', '?')} GiB; {m['os']}; "
        f"{m['implementation']} {m['python']}; pyzmq {m.get('pyzmq', '?')} (libzmq {m.get('libzmq', '?')}). "
        f"Load average at the start: {m.get('load_average', '?')}. Run of "
        f"{results.to_json()['started']}, {results.to_json()['duration_s']:.0f} s"
        + (" (quick: too few samples to mean much)" if results.quick else "")
        + ".",
        "",
        "## Targets",
        "",
        "Ratios are wb-magic over the peer, from medians measured in this same run (throughput ratios: ours over "
        "theirs). *near* means over the target but within the bound past which it counts as failed.",
        "",
    ]
    out += _table(
        ["what", "target", "measured (wb-magic vs floor)", "ratio", "status"],
        [
            [r["what"], r["target"], r["measured"], "-" if r["ratio"] is None else f"{r['ratio']:.2f}", r["status"]]
            for r in rows
        ],
    )
    out.append("")
    if plot:
        out += [f"![latency distributions]({plot})", ""]
    sections = [
        ("Hot call: `hello('World')`, one at a time", "hot", "hot.pyzmq", False),
        ("Pipelined calls, one worker", "pipelined1", "pipelined1.pyzmq", True),
        ("Pipelined calls, two workers", "pipelined2", "pipelined2.pyzmq", True),
        ("Worker to worker", "w2w", "w2w.direct", False),
        ("Large values", "payload", "payload.pyzmq", False),
        ("Start-up: the first call", "startup", "startup.import_zmq", False),
        ("Many workers", "many", None, False),
        ("The cleaner", "cleaner", None, False),
        ("The wire format alone (no sockets)", "wire", "wire.worker_kernel", False),
    ]
    notes = {
        "hot": "Every peer runs `hello(name)` in another process and returns its string; all peers are alive at "
        "once and measured in interleaved rounds. The floor is a pyzmq DEALER/ROUTER pair with JSON in one frame; "
        "*Jupyter wire by hand* is the same pair sending signed six-frame Jupyter messages (no jupyter_client): "
        "the floor for any design that keeps the protocol.",
        "w2w": "The worker-to-worker call is timed inside the calling worker; the direct call is the host's, "
        "in the same rounds.",
        "payload": "The floor sends one frame and gets it back with `copy=False` on both sides (a memoryview).",
        "startup": "Each sample is a new worker (or kernel, or interpreter) from launch to its first reply.",
    }
    for title, group, floor, rate in sections:
        table = _series_table(results, group, floor, rate)
        if not table:
            continue
        out += [f"## {title}", ""]
        if group in notes:
            out += [notes[group], ""]
        out += table
    out += _memory_section(results)
    if results.skipped or results.errors:
        out += ["## Not measured in this run", ""]
        out += [f"- `{what}`: {why}" for what, why in {**results.skipped, **results.errors}.items()]
        out.append("")
    out += [
        "## How it is measured",
        "",
        "- Each call is timed on its own with `time.perf_counter_ns`; medians and p99 are over all samples.",
        "- Peers compared with each other run in interleaved rounds (a block of calls each, in a rotating order), "
        "after a warm-up, so that load from elsewhere on the machine falls on all of them alike.",
        "- Every peer server is a subprocess on loopback TCP (multiprocessing.Pipe: a socket pair), started "
        "before and stopped after its benchmarks.",
        "- Memory is RSS and USS (`psutil.Process.memory_full_info`), in MiB.",
        "- Reproduce: `make bench`, or `python -m benchmarks.run --out DIR` (`--quick` for a smoke run, `--only` "
        "and `--peers` to narrow it).",
        "- Where a hot call's time goes, host and worker side by side: `python -m benchmarks.profile [--mode "
        "pipelined]` (py-spy on both processes, which needs root or ptrace rights, then pyinstrument).",
        "- Whether a change made wb-magic faster: `python -m benchmarks.ab REV [--pairs N]` runs this tree and "
        "revision REV in alternation and compares medians; two runs of the suite minutes apart cannot tell 5% "
        "from the machine's own drift (it has slow and fast phases of a fraction of a second).",
        "",
    ]
    return "\n".join(out)


def _memory_section(results: Results) -> list[str]:
    lines = []
    idle, ipk = results.facts.get("wb_idle_worker"), results.facts.get("ipykernel_idle")
    if idle:
        lines.append(["wb-magic worker, idle (median)", _mib(idle["rss_mib"]), _mib(idle["uss_mib"])])
    if ipk:
        lines.append(["ipykernel, idle", _mib(ipk.get("rss_mib")), _mib(ipk.get("uss_mib"))])
    if "import_zmq_max_rss_mib" in results.facts:
        lines.append(['python -c "import zmq" (peak)', _mib(results.facts["import_zmq_max_rss_mib"]), "-"])
    out: list[str] = []
    if lines:
        out += ["## Memory", ""] + _table(["process", "RSS", "USS"], lines) + [""]
    many = results.facts.get("many_workers")
    if many:
        out += [
            f"**{many['workers']} workers at once**: {many['answered']} answered in {fmt_time(many['total_s'])} "
            f"(closing them all: {fmt_time(many['close_s'])}). Workers: {many['worker_rss_mib_total']:.0f} MiB RSS "
            f"and {many['worker_uss_mib_total']:.0f} MiB USS in all (median "
            f"{_mib(many['worker_rss_mib_median'])} / {_mib(many['worker_uss_mib_median'])} each); the host grew "
            f"by {many['host_rss_growth_mib']:.0f} MiB RSS"
            + (f"; errors: {'; '.join(many['errors'])}" if many["errors"] else "")
            + ".",
            "",
        ]
    return out


# -- the plot ----------------------------------------------------------------------------------------------------


def plot(results: Results, path: Path) -> bool:
    """Box plots of the latency distributions on a log axis; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        return False
    panels = [
        ("Hot call, one at a time", ["hot"]),
        ("Pipelined async calls: time per call", ["pipelined1", "pipelined2"]),
        ("Worker to worker", ["w2w"]),
        ("Large values, round trip", ["payload"]),
        ("First call to a new worker (or kernel, or interpreter)", ["startup"]),
    ]
    panels = [(t, g) for t, g in panels if any(s.group in g and s.samples for s in results.series.values())]
    if not panels:
        return False
    heights = [max(2, sum(1 for s in results.series.values() if s.group in g and s.samples)) for _, g in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(10, 1.2 + 0.42 * sum(heights) + 0.9 * len(panels)), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    ticks = FuncFormatter(lambda value, _: fmt_time(value / 1e6))
    for ax, (title, groups) in zip(axes[:, 0], panels, strict=True):
        found = [s for s in results.series.values() if s.group in groups and s.samples]
        found.sort(key=lambda s: (groups.index(s.group), -s.summary["median"]))
        data = [[max(v, 1e-9) * 1e6 for v in s.samples] for s in found]
        boxes = ax.boxplot(
            data, vert=False, whis=(1, 99), patch_artist=True, widths=0.6,
            flierprops={"markersize": 2, "alpha": 0.3}, medianprops={"color": "black"},
        )  # fmt: skip
        for box, s in zip(boxes["boxes"], found, strict=True):
            box.set_facecolor("#f4a261" if "wb-magic" in s.label else "#a8c5e2")
        ax.set_yticks(range(1, len(found) + 1), [s.label for s in found], fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticks)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", which="major", alpha=0.3)
        for i, s in enumerate(found, start=1):
            ax.annotate(
                fmt_time(s.summary["median"]), (s.summary["median"] * 1e6, i), xytext=(0, 9),
                textcoords="offset points", fontsize=7, ha="center",
            )  # fmt: skip
    axes[-1, 0].set_xlabel("log scale; boxes: quartiles, whiskers: p1 to p99, median labelled", fontsize=8)
    m = results.to_json()["machine"]
    fig.suptitle(f"wb-magic (orange) and peers: {m['cpu']}, {m['cores']} cores, Python {m['python']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
