"""Offline stand-ins for tests and smoke runs.

``python -m clip_search.testing tiny-model DIR`` writes a tiny, randomly initialised SigLIP checkpoint: a
``config.json``, ``model.safetensors``, a SentencePiece tokenizer trained on the spot and the processor config.
It loads through exactly the same ``AutoModel``/``AutoProcessor`` code path as ``google/siglip-base-patch16-224``,
so everything except retrieval *quality* can be exercised with no network.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# Words for the throwaway tokenizer corpus: enough variety for a few hundred subword pieces.
_SUBJECTS = [
    "dog",
    "cat",
    "horse",
    "bird",
    "person",
    "child",
    "woman",
    "man",
    "car",
    "bus",
    "train",
    "boat",
    "bicycle",
    "plane",
    "pizza",
    "cake",
    "cup of coffee",
    "rocket",
    "astronaut",
    "tree",
    "flower",
    "mountain",
    "beach",
    "street",
    "kitchen",
    "table",
    "chair",
    "giraffe",
    "elephant",
    "zebra",
    "sheep",
    "cow",
    "truck",
    "clock",
]
_VERBS = ["sitting on", "running across", "standing near", "lying on", "looking at", "jumping over", "parked by"]
_PLACES = [
    "a sandy beach",
    "the grass",
    "a busy street",
    "a wooden table",
    "the snow",
    "a river",
    "the city",
    "a green field",
    "the kitchen counter",
    "a dirt road",
    "the ocean",
    "a stone wall",
    "the night sky",
]
_ADJECTIVES = ["small", "large", "red", "blue", "white", "black", "old", "young", "happy", "wet", "bright"]
_EXTRA = (
    "the of and to in is on with at by from for an as two three people group sky water snow sunset light dark "
    "green yellow orange purple brown grey pink tall short long round square wooden metal glass plastic stone "
    "building house window door road bridge park garden forest lake hill field sand wave surf skateboard ball "
    "frisbee kite umbrella bag phone laptop computer keyboard book bottle glass plate bowl fork knife spoon "
    "sandwich banana apple orange broccoli carrot hot donut bed couch television toilet sink oven refrigerator "
    "teddy bear scissors vase toothbrush hair drier player playing riding holding eating walking flying "
    "swimming sleeping smiling wearing shirt hat jacket dress shoes galaxy stars coins retina cells brick grass "
    "gravel camera photographer motorcycle space launch smoke fire night morning evening winter summer"
).split()


def _corpus() -> list[str]:
    """A deterministic caption-like corpus for training the tokenizer."""
    lines = []
    for adj, subj, verb, place in itertools.product(_ADJECTIVES, _SUBJECTS, _VERBS, _PLACES[:4]):
        lines.append(f"a {adj} {subj} {verb} {place}")
    for subj, place in itertools.product(_SUBJECTS, _PLACES):
        lines.append(f"a photo of a {subj} in {place}")
    for i in range(0, len(_EXTRA), 7):
        lines.append(" ".join(_EXTRA[i : i + 7]))
    return lines


def train_sentencepiece(path: Path, vocab_size: int = 384) -> Path:
    """Train a unigram SentencePiece model the way SigLIP's ``spiece.model`` is laid out (pad/eos/unk)."""
    import sentencepiece as spm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "spiece"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus()),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        path.write_bytes(prefix.with_suffix(".model").read_bytes())
    return path


def write_tiny_siglip(
    out_dir: str | Path,
    *,
    image_size: int = 224,
    patch_size: int = 16,
    hidden_size: int = 64,
    seed: int = 0,
    base_architecture: bool = False,
) -> Path:
    """Write a tiny random SigLIP checkpoint to ``out_dir`` and return the directory.

    ``base_architecture`` writes the full siglip-base-patch16-224 shapes instead (768-d, 12+12 layers, random
    weights): useless for retrieval, exactly as fast as the real model, so speed can be measured offline.
    """
    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor, SiglipTokenizer
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spiece = train_sentencepiece(Path(tmp) / "spiece.model")
        tokenizer = SiglipTokenizer(vocab_file=str(spiece), model_max_length=64)
        vocab_size = tokenizer.vocab_size

        text_config: dict = {
            "vocab_size": vocab_size,
            "max_position_embeddings": 64,
            "pad_token_id": 1,
            "eos_token_id": 1,
            "bos_token_id": None,
        }
        if base_architecture:  # SiglipConfig's defaults are siglip-base-patch16-224's shapes
            config = SiglipConfig(text_config=text_config, vision_config={"image_size": 224, "patch_size": 16})
        else:
            small = {"hidden_size": hidden_size, "intermediate_size": hidden_size * 2}
            config = SiglipConfig(
                text_config={**text_config, **small, "num_hidden_layers": 2, "num_attention_heads": 2},
                vision_config={
                    **small,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "image_size": image_size,
                    "patch_size": patch_size,
                },
            )
        torch.manual_seed(seed)
        model = SiglipModel(config).eval()
        with torch.no_grad():
            # The released SigLIP base has exp(scale) ~ 117 and bias ~ -12.9: keep the same ranges.
            model.logit_scale.fill_(math.log(117.33))
            model.logit_bias.fill_(-12.93)
        model.save_pretrained(out)

        image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
        processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        processor.save_pretrained(out)
    log.info("wrote %s SigLIP (%dpx) to %s", "base-size random" if base_architecture else "tiny", image_size, out)
    return out


def write_tiny_clip(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random CLIP checkpoint (byte-level BPE tokenizer, no learned bias) to ``out_dir``.

    It shows that CLIP checkpoints load and search through the same code path as SigLIP ones.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Byte-level BPE: every byte as a piece, with and without CLIP's end-of-word mark, plus a few merges.
    pieces = list(bytes_to_unicode().values())
    vocab = {piece: i for i, piece in enumerate(pieces + [p + "</w>" for p in pieces])}
    merges = [("a", "t</w>"), ("c", "at</w>"), ("d", "o"), ("do", "g</w>"), ("t", "h"), ("th", "e</w>")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **small,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={**small, "image_size": 224, "patch_size": 32},
        projection_dim=32,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    log.info("wrote tiny CLIP to %s", out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip_search.testing", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-model", help="write a tiny random SigLIP checkpoint to DIR")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--image-size", type=int, default=224)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--base-architecture",
        action="store_true",
        help="full siglip-base-patch16-224 shapes with random weights (for speed measurements)",
    )
    clip = sub.add_parser("tiny-clip", help="write a tiny random CLIP checkpoint to DIR")
    clip.add_argument("dir", type=Path)
    fill = sub.add_parser("fill", help="write a synthetic collection of N clustered vectors to DATA_DIR")
    fill.add_argument("data_dir", type=Path)
    fill.add_argument("--n", type=int, required=True, help="rows the collection should hold")
    width = fill.add_mutually_exclusive_group(required=True)
    width.add_argument("--model", help="hub id or directory: its width, recorded as made by it")
    width.add_argument("--dim", type=int, help="vector width, recorded as a synthetic model")
    fill.add_argument("--clusters", type=int, default=1000)
    fill.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "tiny-model":
        path = write_tiny_siglip(
            args.dir, image_size=args.image_size, seed=args.seed, base_architecture=args.base_architecture
        )
        print(path)
    elif args.command == "tiny-clip":
        print(write_tiny_clip(args.dir))
    elif args.command == "fill":
        from clip_search.synthetic import fill as fill_collection

        written = fill_collection(
            args.data_dir, args.n, model=args.model, dim=args.dim, clusters=args.clusters, seed=args.seed
        )
        print(f"{written} rows written; the collection in {args.data_dir} holds {args.n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
