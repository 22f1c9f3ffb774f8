"""The query model: compound, negative, multi-text and feedback rankings follow the documented formula; filters run
before ranking; pages and date orders are stable. The encoder is a stub whose vectors the test chooses (only the
arithmetic needs that); the collection, its Lance table and the engine are the real ones."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_search.collection import NewImage
from clip_search.engine import SearchEngine
from clip_search.errors import EmptyQueryError, InvalidQueryError, NotFoundError
from clip_search.search import Query
from tests.conftest import make_settings

DIM = 16
N = 60
T0 = datetime(2026, 1, 1, tzinfo=UTC)
RNG = np.random.default_rng(7)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


TEXTS = {w: _unit(RNG.normal(size=DIM)) for w in ("beach", "waves", "people", "night", "dog")}
COLOURS = {(200, 30, 30): _unit(RNG.normal(size=DIM)), (30, 30, 200): _unit(RNG.normal(size=DIM))}
VECTORS = np.stack([_unit(RNG.normal(size=DIM)) for _ in range(N)])


class StubEncoder:
    """Vectors the test chooses: texts from TEXTS, solid-colour images from COLOURS (the arithmetic only)."""

    name = "stub-encoder"
    input_size = 32

    def encode_text(self, texts):
        return np.stack([TEXTS[t] for t in texts])

    def preprocess(self, image):
        return np.asarray(image.convert("RGB").resize((2, 2)), dtype=np.float32)

    def encode_pixels(self, pixels):
        return np.stack([COLOURS[tuple(int(c) for c in p[0, 0])] for p in pixels])

    def encode_images(self, images):
        return self.encode_pixels(np.stack([self.preprocess(i) for i in images]))

    def probability(self, scores):
        return 1 / (1 + np.exp(-(np.asarray(scores) * 10 - 2)))


def _row(i: int) -> NewImage:
    sha = hashlib.sha256(f"image {i}".encode()).hexdigest()
    wide = i % 3 != 0
    return NewImage(
        key=f"images/{sha[:2]}/{sha}.jpg",
        sha256=sha,
        width=800 + 10 * i if wide else 600,
        height=600 if wide else 900 + i,
        embedding=VECTORS[i],
        source="upload" if i % 4 == 0 else f"/photos/trip{i % 2}/img{i}.jpg",
        caption=f"a {'dog' if i % 5 == 0 else 'hotdog'} photo number {i}",
        added_at=(T0 + timedelta(hours=(i * 7) % N)).isoformat(),
    )


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_model_dir: Path):
    settings = make_settings(tmp_path_factory.mktemp("query") / "data", tiny_model_dir)
    eng = SearchEngine(settings, encoder=StubEncoder())
    for start in range(0, N, 20):
        eng.collection.add([_row(i) for i in range(start, start + 20)])
    yield eng
    eng.close()


ROWS = [_row(i) for i in range(N)]
IDS = np.array([r.id for r in ROWS])


def _expected(q: np.ndarray, *, keep=lambda r: True, exclude=()) -> list[int]:
    """Ranking computed independently: cosine with the unit query, best first, ties by id."""
    q = q / np.linalg.norm(q)
    scores = VECTORS @ q
    pairs = [(-float(s), int(i)) for s, i, r in zip(scores, IDS, ROWS, strict=True) if keep(r) and i not in exclude]
    return [i for _, i in sorted(pairs)]


def _ids(page) -> list[int]:
    return [h.id for h in page.hits]


def _png(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "PNG")
    return out.getvalue()


def test_compound_negative_and_multi_text_follow_the_weighted_sum(engine):
    page = engine.query("beach").plus("waves", weight=0.5).minus("people").limit(10).run()
    expected = _expected(TEXTS["beach"] + 0.5 * TEXTS["waves"] - TEXTS["people"])[:10]
    assert _ids(page) == expected
    q = _unit(TEXTS["beach"] + 0.5 * TEXTS["waves"] - TEXTS["people"])
    assert page.hits[0].score == pytest.approx(float(VECTORS[list(IDS).index(expected[0])] @ q), abs=1e-5)
    assert all(h.probability is None for h in page.hits)  # only defined for one text


def test_image_and_text_parts_combine(engine):
    red = (200, 30, 30)
    page = engine.query(image=_png(red)).plus("night", weight=2).limit(8).run()
    assert _ids(page) == _expected(COLOURS[red] + 2 * TEXTS["night"])[:8]


def test_one_text_has_probabilities_and_wrappers_agree(engine):
    page = engine.query("dog").limit(5).run()
    assert _ids(page) == _expected(TEXTS["dog"])[:5]
    assert all(h.probability is not None for h in page.hits)
    assert [h.id for h in engine.search_text("dog", k=5)] == _ids(page)


def test_collection_image_as_a_part_is_left_out_of_its_results(engine):
    source = int(IDS[3])
    page = engine.query(id=source).minus("beach", weight=0.3).limit(6).run()
    assert _ids(page) == _expected(VECTORS[3] - 0.3 * TEXTS["beach"], exclude={source})[:6]
    assert [h.id for h in engine.search_similar(source, k=6)] == _expected(VECTORS[3], exclude={source})[:6]


def test_feedback_is_rocchio_and_rounds_accumulate(engine):
    first = engine.query("beach").limit(10).run()
    good1, bad1, good2 = first.hits[2].id, first.hits[0].id, first.hits[5].id
    round1 = engine.query("beach").like(good1).unlike(bad1).limit(10)
    round2 = round1.like(good2)  # the refined query keeps the earlier marks

    def vec(i):
        return VECTORS[list(IDS).index(i)]

    q1 = _unit(TEXTS["beach"]) + 0.75 * vec(good1) - 0.25 * vec(bad1)
    assert _ids(round1.run()) == _expected(q1, exclude={bad1})[:10]
    q2 = _unit(TEXTS["beach"]) + 0.75 * (vec(good1) + vec(good2)) / 2 - 0.25 * vec(bad1)
    ids2 = _ids(round2.run())
    assert ids2 == _expected(q2, exclude={bad1})[:10]
    assert bad1 not in ids2 and good1 in ids2  # good results stay, bad ones go
    assert round2.unlike(good1).liked == (good2,)  # the latest mark wins


def test_feedback_alone_and_cancelling_parts(engine):
    good = int(IDS[10])
    assert _ids(engine.query().like(good).limit(5).run()) == _expected(VECTORS[10])[:5]
    with pytest.raises(InvalidQueryError, match="cancel"):
        engine.query("beach").minus("beach").run()
    with pytest.raises(InvalidQueryError, match="empty"):
        engine.query().unlike(good).run()
    with pytest.raises(EmptyQueryError):
        engine.query("   ")
    with pytest.raises(NotFoundError):
        engine.query(id=12345).run()


FILTERS = [
    ({"source": "upload"}, lambda r: r.source == "upload"),
    ({"source": "/photos/trip1"}, lambda r: r.source.startswith("/photos/trip1/")),
    ({"caption": "dog"}, lambda r: " dog " in r.caption),
    ({"orientation": "portrait"}, lambda r: r.height > r.width * 1.1),
    ({"orientation": "landscape", "min_width": 1100}, lambda r: r.width > r.height * 1.1 and r.width >= 1100),
    ({"after": "2026-01-02", "before": "2026-01-02T12:00"}, lambda r: "2026-01-02T00" <= r.added_at < "2026-01-02T12"),
]


@pytest.mark.parametrize(("conditions", "keep"), FILTERS)
def test_filters_apply_before_ranking(engine, conditions, keep):
    matches = [r for r in ROWS if keep(r)]
    assert 0 < len(matches) < N
    page = engine.query("beach").where(**conditions).limit(100).run()
    assert _ids(page) == _expected(TEXTS["beach"], keep=keep)  # every match, in the right order, nothing else
    small = engine.query("beach").where(**conditions).limit(3).run()
    assert _ids(small) == _expected(TEXTS["beach"], keep=keep)[:3]


def test_filter_values_are_quoted_not_executed(engine):
    assert engine.query("beach").where(source="x' OR '1'='1").run().hits == []
    assert engine.query("beach").where(caption="dog' OR '1'='1").limit(100).run().hits == []


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"after": "yesterday"}, "not a date"),
        ({"colour": "red"}, "unknown filter"),
        ({"orientation": "round"}, "orientation must be"),
        ({"min_width": -3}, "minimum size"),
        ({"after": "2026-02-01", "before": "2026-01-01"}, "must come before"),
        ({"caption": "!!!"}, "one to ten words"),
    ],
)
def test_bad_filters_say_what_to_change(engine, conditions, message):
    with pytest.raises(InvalidQueryError, match=message):
        engine.query("beach").where(**conditions)


def test_pages_concatenate_to_one_bigger_page(engine):
    base = engine.query("waves").minus("dog").where(source="/photos")
    pages = [base.limit(7).page(n).run() for n in (1, 2, 3)]
    assert [i for p in pages for i in _ids(p)] == _ids(base.limit(21).run())
    assert all(p.has_more for p in pages)
    last = base.limit(7).offset(len(_expected(TEXTS["waves"], keep=lambda r: r.source.startswith("/photos"))) - 2)
    assert len(last.run().hits) == 2 and not last.run().has_more


def _times(page) -> list[str]:
    return [h.added_at for h in page.hits]


def test_browse_by_date_without_a_query(engine):
    newest = engine.query().sort_by("newest").limit(N).run()
    assert newest.total == N and len(newest.hits) == N
    assert _times(newest) == sorted(_times(newest), reverse=True)
    oldest = engine.query().where(source="upload").sort_by("oldest").limit(4)
    pages = _ids(oldest.run()) + _ids(oldest.page(2).run()) + _ids(oldest.page(3).run())
    uploads = sorted((r for r in ROWS if r.source == "upload"), key=lambda r: (r.added_at, r.id))
    assert pages == [r.id for r in uploads][: len(pages)] and len(pages) == min(12, len(uploads))


def test_sorting_a_query_by_date_keeps_its_good_matches(engine):
    relevance = engine.query("beach").minus("people").limit(N).run()
    best = relevance.hits[0].score
    good = {h.id for h in relevance.hits if h.score >= 0.8 * best}
    newest = engine.query("beach").minus("people").sort_by("newest").limit(N).run()
    assert {h.id for h in newest.hits} == good and newest.total == len(good)
    assert _times(newest) == sorted(_times(newest), reverse=True)
    single = engine.query("dog").sort_by("oldest").limit(N).run()
    assert all(h.probability >= engine.settings.search.min_probability for h in single.hits)
    assert _times(single) == sorted(_times(single))


def test_json_queries_match_the_builder(engine):
    data = {
        "text": "beach",
        "minus": ["people"],
        "parts": [{"text": "waves", "weight": 0.5}, {"id": int(IDS[4]), "weight": -0.2}],
        "like": [int(IDS[1])],
        "unlike": [int(IDS[2])],
        "filters": {"orientation": "landscape"},
        "sort": "relevance",
        "k": 5,
        "page": 2,
    }
    built = (
        engine.query("beach")
        .minus("people")
        .plus("waves", weight=0.5)
        .minus(id=int(IDS[4]), weight=0.2)
        .like(int(IDS[1]))
        .unlike(int(IDS[2]))
        .where(orientation="landscape")
        .limit(5)
        .page(2)
    )
    parsed = Query.from_dict(data, runner=engine)
    assert parsed == built
    assert _ids(parsed.run()) == _ids(built.run())
    assert Query.from_dict(parsed.to_dict(), runner=engine) == parsed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "JSON object"),
        ({"txt": "beach"}, "unknown query field"),
        ({"parts": [{"path": "/etc/passwd"}]}, "one of"),
        ({"text": "beach", "sort": "random"}, "sort must be"),
        ({"text": "beach", "k": 0}, "at least 1"),
        ({"text": "beach", "parts": [{"text": "x", "weight": "heavy"}]}, "weight"),
        ({"text": "beach", "offset": 5000}, "results stop at"),
    ],
)
def test_bad_json_queries_say_what_to_change(engine, data, message):
    with pytest.raises(InvalidQueryError, match=message):
        Query.from_dict(data, runner=engine).run()
