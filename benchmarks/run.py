"""Every speed figure of the README, each as a ratio against a floor measured beside it, in one command.

    python benchmarks/run.py [--quick] [--out benchmarks/results.md] [--readme README.md] [--model DIR]
        [--work /tmp/clip-search-bench] [--rounds 3]

Each figure is measured ``--rounds`` times (3; ``--quick``: 1, on smaller collections) with its floor measured in
the same round, so the ratios hold on a shared, noisy machine; the table gives their median and spread
(lowest-highest) and the absolute figures of the median round. The measurements are the bench_* scripts'
own functions. Writes the Markdown table (with the date, the machine and the command) to stdout and to
``--out``; ``--readme`` also replaces the table between its markers in the README. Each figure's rows are saved
under ``--work`` as soon as it is measured: ``--resume`` goes on where an interrupted run stopped.

The model is the base-architecture random SigLIP (``python -m clip_search.testing tiny-model DIR
--base-architecture``, built once under ``--work``): its speed is siglip-base-patch16-224's, its results are
meaningless. Synthetic collections are written once under ``--work`` (``python -m clip_search.testing fill``) and
reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import bench_collection  # noqa: E402
import bench_ingest  # noqa: E402
import bench_search  # noqa: E402
import bench_vector_index  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "coco-mini" / "val2017"
BEGIN, END = "<!-- benchmarks/run.py: begin -->", "<!-- benchmarks/run.py: end -->"
log = logging.getLogger("run")


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full one, or --quick."""

    scan_n: tuple[int, ...] = (100_000, 1_000_000)
    query_n: int = 100_000  # collection behind the text-query figure
    upload_n: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    open_n: int = 1_000_000
    ivf_n: int = 1_000_000
    photos: int = 64
    uploads: int = 6
    rounds: int = 3


QUICK = Plan(
    scan_n=(20_000, 100_000),
    query_n=5_000,
    upload_n=(1_000, 5_000),
    open_n=50_000,
    ivf_n=20_000,
    photos=8,
    uploads=4,
    rounds=1,
)


@dataclass
class Row:
    """One line of the table: a figure measured in several rounds."""

    figure: str
    compares: str  # what the ratio divides by what
    target: str
    measured_by: str = ""  # the figure function, so --resume knows what is done
    ratios: list[float] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # absolute figures, one per round

    def add(self, ratio: float, detail: str) -> None:
        self.ratios.append(ratio)
        self.details.append(detail)
        log.info("%s: %.2fx (%s)", self.figure, ratio, detail)

    def cells(self) -> list[str]:
        if not self.ratios:
            return [self.figure, "not measured", self.compares, self.target, "", "to be measured"]
        median = statistics.median(self.ratios)
        middle = self.details[min(range(len(self.ratios)), key=lambda i: abs(self.ratios[i] - median))]
        spread = f" ({min(self.ratios):.2f}-{max(self.ratios):.2f})" if len(self.ratios) > 1 else ""
        return [self.figure, f"**{median:.2f}x**{spread}", self.compares, self.target, middle, "to be measured"]


@dataclass
class Context:
    plan: Plan
    model: str
    work: Path
    rows: list[Row] = field(default_factory=list)
    measuring: str = ""  # the figure function running now
    spent_s: float = 0.0  # seconds spent measuring, over every invocation that made the rows
    loads: list[float] = field(default_factory=list)  # load averages seen at the start and end of each figure

    def row(self, figure: str, compares: str, target: str) -> Row:
        self.rows.append(Row(figure, compares, target, self.measuring))
        return self.rows[-1]

    def collection(self, n: int) -> Path:
        """A synthetic collection of ``n`` rows recorded as this model's (written once, reused)."""
        path = self.work / f"{Path(self.model).name}-{n}"
        bench_collection.fill(path, n, 0, self.model)
        return path

    @property
    def saved(self) -> Path:
        """Where the rows measured so far are kept, so --resume goes on after an interruption."""
        return self.work / "rows.json"

    def save(self) -> None:
        state = {"plan": self.plan.__dict__, "model": self.model, "spent_s": self.spent_s, "loads": self.loads}
        state["rows"] = [row.__dict__ for row in self.rows]
        self.saved.write_text(json.dumps(state, indent=1), encoding="utf-8")

    def resume(self) -> set[str]:
        """Take the rows of an earlier, interrupted run of the same plan and model; returns the figures done."""
        if not self.saved.exists():
            return set()
        state = json.loads(self.saved.read_text(encoding="utf-8"))
        plan = Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["plan"].items()})
        if plan != self.plan or state["model"] != self.model:
            log.info("%s is from another plan or model: measuring everything again", self.saved)
            return set()
        self.rows = [Row(**row) for row in state["rows"]]
        self.spent_s, self.loads = state["spent_s"], state["loads"]
        return {row.measured_by for row in self.rows}


# -- the figures ---------------------------------------------------------------------------------------------------


def text_query(ctx: Context) -> None:
    """A text search through the engine (encode, scan, rows, URLs) against the text forward it contains."""
    from clip_search.engine import SearchEngine

    row = ctx.row(
        f"text query end to end, {ctx.plan.query_n:,} images, k=12",
        "time / the bare text forward (same query path)",
        "none set (1.12x before)",
    )
    settings = bench_ingest.ingest_settings(ctx.model)
    settings.data_dir = ctx.collection(ctx.plan.query_n)
    with SearchEngine(settings) as engine:
        engine.encoder.warm_up()
        engine.search_text("warm up the scan and the table", 12)
        for round_no in range(ctx.plan.rounds):
            texts = [f"photo {round_no}-{i}: a dog running on a beach at sunset" for i in range(20)]
            full, bare = [], []
            for i, text in enumerate(texts):  # every text is new (no cache); alternate which goes first
                if i % 2:
                    full.append(_seconds(lambda t=text: engine.search_text(t, 12)))
                bare.append(_seconds(lambda t=text: engine.encoder.encode_text([t + "."])))
                if not i % 2:
                    full.append(_seconds(lambda t=text: engine.search_text(t, 12)))
            e2e, forward = statistics.median(full), statistics.median(bare)
            path = engine.encoder.query_path
            row.add(e2e / forward, f"{e2e * 1e3:.0f} ms vs {forward * 1e3:.0f} ms ({path} text tower)")


def scans(ctx: Context) -> None:
    """One query and a batch of 32 over the flat index against one pass over the vectors."""
    from clip_search.config import load_config

    threads = load_config(env={}).index.search_threads or os.cpu_count() or 1
    other = 2 if threads == 1 else 1  # the alternative shown beside the default
    queries = bench_search.queries_for(200)
    for n in ctx.plan.scan_n:
        single = ctx.row(f"one query, flat scan, {n:,} x 768", "bandwidth floor time / scan time", ">= 0.8x")
        batch = ctx.row(f"batch of 32 queries, flat scan, {n:,} x 768", "bandwidth floor time / scan time", ">= 0.8x")
        index = bench_search.build_index(n)
        for _ in range(ctx.plan.rounds):
            r = bench_search.scan_round(index, queries, threads=(threads, other), with_faiss=False)
            floor, one, many = r["floor_s"], r["single_s"], r["batch_s"]
            single.add(
                floor[threads] / one[threads],
                f"{one[threads] * 1e3:.1f} ms, floor {floor[threads] * 1e3:.1f} ms ({threads} thread; "
                f"{other} threads: {floor[other] / one[other]:.2f}x, {one[other] * 1e3:.1f} ms)",
            )
            kind = "bfloat16" if r["bf16"] else "float32"
            compute = r.get("bf16_compute_floor_s", r["compute_floor_s"])
            straight = f", float32 {r['fp32_batch_s'][threads] * 1e3:.0f} ms" if r["bf16"] else ""
            batch.add(
                floor[threads] / many[threads],
                f"{many[threads] * 1e3:.0f} ms = {compute / many[threads]:.2f}x the {kind} compute floor of 1 core"
                f"{straight} ({threads} thread; {other} threads: {floor[other] / many[other]:.2f}x, "
                f"{many[other] * 1e3:.0f} ms)",
            )
        del index


def ingest(ctx: Context) -> None:
    """``ingest`` of real photos against the model's forward pass alone over the same photos."""
    row = ctx.row(
        f"ingest, {ctx.plan.photos} coco-mini photos (~640x480 JPEG)",
        "ingest images/s / bare image forward images/s",
        ">= 0.9x",
    )
    settings = bench_ingest.ingest_settings(ctx.model)
    paths = bench_ingest.photos(PHOTOS, ctx.plan.photos)
    encoder = bench_ingest.load_encoder(settings)
    pixels = bench_ingest.prepared_pixels(settings, encoder, paths)
    for _ in range(ctx.plan.rounds):
        r = bench_ingest.ingest_round(settings, encoder, paths, pixels)
        row.add(r["ratio"], f"{r['ingest']:.2f} vs {r['floor']:.2f} images/s")


def uploads(ctx: Context) -> None:
    """One upload until searchable, against one image forward of the same photo, at a small and a large N."""
    rows = {
        n: ctx.row(f"upload -> searchable, {n:,} images", "time / one image forward (same photo)", "<= 1.2x")
        for n in ctx.plan.upload_n
    }
    paths = {n: ctx.collection(n) for n in ctx.plan.upload_n}
    for _ in range(ctx.plan.rounds):
        for n, row in rows.items():
            r = bench_collection.run_upload_child(paths[n], ctx.model, "flat", ctx.plan.uploads)
            row.add(r["ratio"], f"{r['upload_ms']:.0f} ms vs {r['forward_ms']:.0f} ms")


def open_first_answer(ctx: Context) -> None:
    """Opening the collection until its first answer, against reading its vectors from the table alone."""
    n = ctx.plan.open_n
    row = ctx.row(
        f"open -> first answer, {n:,} x 768 on local disk",
        "time / reading the vector column alone",
        "<= 10 s absolute",
    )
    path = ctx.work / f"synthetic-{n}"
    bench_collection.fill(path, n, 768, "")
    bench_collection.vector_read_s(path)  # the page cache holds the table for both sides from now on
    for _ in range(ctx.plan.rounds):
        floor = bench_collection.vector_read_s(path)
        opened = bench_collection.child("open", path, 768, "")
        row.add(opened["open_s"] / floor, f"{opened['open_s']:.1f} s vs {floor:.1f} s")


def ivf(ctx: Context) -> None:
    """IVF at the default nprobe against the flat scan of the same vectors: speed-up and recall@10."""
    from clip_search.config import load_config

    n, nprobe = ctx.plan.ivf_n, load_config(env={}).index.nprobe
    row = ctx.row(
        f"IVF (default nlist, nprobe {nprobe}) vs flat, {n:,} x 768 clustered",
        "flat query time / IVF query time",
        ">= 10x, recall@10 >= 0.95",
    )
    source = bench_vector_index.Source(n, 768, 1000)
    queries = source.queries(200)
    for _ in range(ctx.plan.rounds):
        flat = bench_vector_index._child(bench_vector_index.run_job, bench_vector_index.Job("flat", source, queries))
        job = bench_vector_index.Job("ivf", source, queries, nprobes=[nprobe])
        approx = bench_vector_index._child(bench_vector_index.run_job, job)
        recall = bench_vector_index.recall_at_k(flat["found"], approx["found"][nprobe])
        speed = flat["ms"] / approx["ms"][nprobe]
        row.add(speed, f"{approx['ms'][nprobe]:.1f} vs {flat['ms']:.1f} ms, recall@10 {recall:.3f}")


FIGURES: list[Callable[[Context], None]] = [text_query, scans, ingest, uploads, open_first_answer, ivf]


# -- the table -------------------------------------------------------------------------------------------------------


def _seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def machine() -> str:
    """CPU, cores, memory and the library versions the figures depend on."""
    import faiss
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [line.split(":", 1)[1] for line in info.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].strip() if names else cpu
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {gpu}; torch {torch.__version__}, "
        f"faiss {faiss.__version__}, numpy {numpy.__version__}"
    )


def table(ctx: Context, command: str) -> str:
    header = ["figure", "ratio, median (spread)", "ratio is", "target", "absolute, median round", "GPU"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {ctx.plan.rounds} round(s), each ratio against its "
        f"floor measured in the same round; load average {min(ctx.loads):.1f}-{max(ctx.loads):.1f} while "
        f"measuring; {ctx.spent_s / 60:.0f} min. Command: `{command}`.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    order = [figure.__name__ for figure in FIGURES]
    rows = sorted(ctx.rows, key=lambda row: order.index(row.measured_by))  # stable: sizes stay in order
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def replace_block(readme: Path, block: str) -> None:
    """Put ``block`` between the README's markers (which must be there already)."""
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers to put the table between")
    head, rest = text.split(BEGIN, 1)
    readme.write_text(f"{head}{BEGIN}\n{block}{END}{rest.split(END, 1)[1]}", encoding="utf-8")


def base_model(work: Path) -> str:
    """The base-architecture random SigLIP under ``work``, built on the first run."""
    from clip_search.testing import write_tiny_siglip

    path = work / "siglip-base-random"
    if not (path / "model.safetensors").exists():
        write_tiny_siglip(path, base_architecture=True)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller collections, one round (a few minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per figure (default 3; --quick: 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.md")
    parser.add_argument("--readme", type=Path, default=None, help="also replace the table in this README")
    parser.add_argument("--model", default=None, help="model directory (default: base-architecture random SigLIP)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip-search-bench")
    parser.add_argument("--only", nargs="+", choices=[f.__name__ for f in FIGURES], help="measure only these")
    parser.add_argument(
        "--resume", action="store_true", help="keep the figures saved by an earlier run (with --only: all but those)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    plan = QUICK if args.quick else Plan()
    if args.rounds:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # children
    # The random model's ONNX towers (~430 MB) and query path choice stay under --work, not in the user's cache.
    os.environ["XDG_CACHE_HOME"] = str(args.work / "cache")
    ctx = Context(plan, args.model or base_model(args.work), args.work)
    done = ctx.resume() if args.resume else set()
    if args.only and args.readme and not done:
        # The table is written from the rows of this run: with nothing to keep, --only would drop the other figures.
        parser.error(f"--only with --readme needs --resume and the rows of an earlier run of this plan in {ctx.saved}")
    for figure in FIGURES:
        if args.only:  # measured again, whatever was saved
            if figure.__name__ not in args.only:
                continue
            ctx.rows = [row for row in ctx.rows if row.measured_by != figure.__name__]
        elif figure.__name__ in done:
            continue
        log.info("measuring %s", figure.__name__)
        started, ctx.measuring = time.perf_counter(), figure.__name__
        ctx.loads.append(os.getloadavg()[0])
        figure(ctx)
        ctx.loads.append(os.getloadavg()[0])
        ctx.spent_s += time.perf_counter() - started
        ctx.save()
    command = ".venv/bin/python benchmarks/run.py" + (" --quick" if args.quick else "")
    block = table(ctx, command)
    print(block)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(block, encoding="utf-8")
    if args.readme:
        replace_block(args.readme, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
