"""``python -m clip_search eval DATASET`` and ``python -m clip_search classify IMAGE --labels ...``.

Both need only the model, not the collection: they never open the catalog or the image store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clip_search.errors import ClipSearchError


def _settings(args: argparse.Namespace) -> Any:
    from clip_search.config import load_config

    settings = load_config(args.config)
    model = getattr(args, "sub_model", None) or args.model
    if model:
        settings.model.id = model
    return settings


def encoder_from_settings(settings: Any) -> Any:
    """The engine's encoder, built from settings without opening a collection."""
    from clip_search.encoder import HFEncoder

    return HFEncoder.from_settings(settings.model)


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ClipSearchError(f"--k takes comma-separated positive integers, e.g. 1,5,10 (not {text!r})") from None
    if not ks or ks[0] < 1:
        raise ClipSearchError(f"--k takes comma-separated positive integers, e.g. 1,5,10 (not {text!r})")
    return ks


def cmd_eval(args: argparse.Namespace) -> int:
    from clip_search.evaluation.datasets import load_dataset
    from clip_search.evaluation.embed_cache import EmbeddingCache, default_cache_dir
    from clip_search.evaluation.report import markdown, to_json, write_report
    from clip_search.evaluation.run import evaluate

    ks = parse_ks(args.k)
    settings = _settings(args)
    dataset = load_dataset(
        args.dataset, images_dir=args.images, limit=args.limit, seed=args.seed, extensions=settings.ingest.extensions
    )
    encoder = encoder_from_settings(settings)
    cache = EmbeddingCache(None if args.no_cache else (args.cache_dir or default_cache_dir()), encoder)
    results, _ = evaluate(
        dataset,
        encoder,
        ks=ks,
        cache=cache,
        workers=args.workers or settings.ingest.decode_workers,
        max_pixels=settings.ingest.max_pixels,
        templates=args.template,
        baseline=not args.no_baseline,
        progress=not args.quiet,
    )
    stem = dataset.name + (f"-limit{args.limit}" if args.limit else "")
    to_stdout = args.json == "-"
    written = write_report(
        results,
        args.out_dir,
        stem=stem,
        json_path=None if args.json in (None, "-") else args.json,
        plot=not args.no_plot,
    )
    if to_stdout:
        print(to_json(results))
    else:
        print(markdown(results), end="")
    if not args.quiet:
        print("wrote " + ", ".join(str(p) for p in written.values()), file=sys.stderr)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from clip_search.evaluation.zeroshot import classify_image, parse_labels
    from clip_search.images import decode_image, model_draft_side

    labels = parse_labels(args.labels)
    settings = _settings(args)
    try:
        data = Path(args.image).read_bytes()
    except OSError as exc:
        raise ClipSearchError(f"cannot read {args.image}: {exc.strerror or exc}") from exc
    encoder = encoder_from_settings(settings)
    decoded = decode_image(data, max_pixels=settings.ingest.max_pixels, draft_side=model_draft_side(encoder.input_size))
    result = classify_image(encoder, decoded.image, labels, args.template)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return 0
    width = max(len(lp.label) for lp in result.labels)
    for lp in result.labels:
        print(f"{lp.label:<{width}}  {lp.probability:7.2%}")
    if result.method == "sigmoid":
        print("(SigLIP: each label is scored on its own; the probabilities need not add up to 1)", file=sys.stderr)
    else:
        print("(softmax over these labels: this model has no calibrated per-label probability)", file=sys.stderr)
    return 0


def add_commands(sub: Any) -> None:
    """Register ``eval`` and ``classify`` on the main parser's sub-commands."""
    ev = sub.add_parser(
        "eval",
        help="measure retrieval quality on a captioned or labelled data set, beside a BM25 keyword baseline",
        description="Evaluate the model on DATASET: a COCO captions JSON, an image,caption CSV, a folder with "
        "captions.csv and its images, or a folder of class sub-folders (optional classes.csv). Prints a Markdown "
        "report and writes it with JSON and a recall@k plot under --out-dir.",
    )
    ev.add_argument("dataset", type=Path, help="captions file, or folder (captioned or one sub-folder per class)")
    ev.add_argument(
        "--model",
        dest="sub_model",
        metavar="MODEL",
        default=None,
        help="hub id or local directory (overrides model.id)",
    )
    ev.add_argument("--images", type=Path, default=None, help="folder of the captioned images (default: found)")
    ev.add_argument("--k", default="1,5,10", help="cut-offs for recall/precision (default 1,5,10)")
    ev.add_argument("--limit", type=int, default=None, help="evaluate a seeded subset of N images")
    ev.add_argument("--seed", type=int, default=0, help="seed of the --limit subset (default 0)")
    ev.add_argument("--json", default=None, metavar="OUT", help="also write the JSON here ('-': print JSON only)")
    ev.add_argument("--out-dir", type=Path, default=Path("eval-results"), help="report folder (eval-results)")
    ev.add_argument("--no-plot", action="store_true", help="skip the recall@k PNG")
    ev.add_argument("--no-baseline", action="store_true", help="skip the BM25 keyword baseline")
    ev.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (~/.cache/clip-search/eval)")
    ev.add_argument("--no-cache", action="store_true", help="embed everything again and keep nothing on disk")
    ev.add_argument("--template", action="append", default=None, help="zero-shot prompt template with {} (repeat)")
    ev.add_argument("--workers", type=int, default=None, help="decode threads (default: ingest.decode_workers)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)

    cl = sub.add_parser(
        "classify",
        help="zero-shot labels for one image (SigLIP per-label probabilities)",
        description="Score IMAGE against each label: SigLIP's sigmoid probability per label, with prompt "
        "templates averaged. Labels are independent: several can be likely, or none.",
    )
    cl.add_argument("image", type=Path, help="image file")
    cl.add_argument("--labels", required=True, help='comma-separated labels, e.g. "cat,dog,car"')
    cl.add_argument(
        "--model",
        dest="sub_model",
        metavar="MODEL",
        default=None,
        help="hub id or local directory (overrides model.id)",
    )
    cl.add_argument("--template", action="append", default=None, help="prompt template with {} (repeatable)")
    cl.add_argument("--json", action="store_true", help="print JSON")
    cl.set_defaults(func=cmd_classify)
