"""The Search tab's query controls as plain handlers: negative terms, filters, orders, pages, marks, /query JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_search.app import handlers, session, text
from clip_search.engine import SearchEngine
from clip_search.errors import ClipSearchError, EmptyQueryError, InvalidQueryError
from clip_search.ingest import ingest_paths
from tests.conftest import make_settings, shared_data


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, photos: list[Path]):
    settings = make_settings(
        tmp_path_factory.mktemp("ui-query") / "data", tiny_model_dir, upload={"near_duplicate_threshold": 0.9999}
    )
    eng = SearchEngine(settings)
    ingest_paths(eng, photos[:10], progress=False)
    eng.upload(photos[20].read_bytes(), filename=photos[20].name, caption="a dog in the snow")
    yield eng
    eng.close()


def test_search_fields_become_the_query_json():
    request = session.search_request(
        " a beach ",
        "people, cars ,",
        after="2026-01-01",
        source="upload",
        caption="dog",
        orientation="landscape",
        sort="newest",
        k=6,
    )
    assert request == {
        "text": "a beach",
        "minus": ["people", "cars"],
        "filters": {"after": "2026-01-01", "source": "upload", "caption": "dog", "orientation": "landscape"},
        "sort": "newest",
        "k": 6,
    }
    assert "filters" not in session.search_request("a beach", "", source="all", orientation="any")
    with pytest.raises(EmptyQueryError, match="empty"):
        session.search_request("  ", "people")
    # no words but a filter or an order by date: a browse of the collection
    assert session.search_request("", source="upload") == {"sort": "relevance", "filters": {"source": "upload"}}


def test_negative_terms_change_the_results(engine: SearchEngine):
    plain = session.run_state(engine, session.new_state("text", session.search_request("a city street", k=10)))
    without = session.run_state(
        engine, session.new_state("text", session.search_request("a city street", "cars, people", k=10))
    )
    assert plain.state["ids"] != without.state["ids"]
    assert "without cars, people" in without.message
    expected = engine.query("a city street").minus("cars").minus("people").limit(10).run()
    assert without.state["ids"] == [h.id for h in expected.hits]


def test_a_filter_keeps_only_matching_images(engine: SearchEngine):
    results = session.run_state(
        engine, session.new_state("text", session.search_request("a photo", source="upload", k=10))
    )
    assert len(results.state["ids"]) == 1 and not results.page.has_more
    assert "filtered by source" in results.message
    browse = session.run_state(
        engine, session.new_state("text", session.search_request("", caption="dog", sort="newest"))
    )
    assert browse.state["ids"] == results.state["ids"]
    hit = session.opened_hit(engine, browse.state, 0)
    assert hit["caption"] == "a dog in the snow" and hit["score"] is None  # a browse has no score to show
    assert "Similarity" not in text.describe_hit(hit)


def test_load_more_appends_the_next_page(engine: SearchEngine):
    first = session.run_state(engine, session.new_state("text", session.search_request("a kitchen", k=4)))
    assert first.page.has_more and first.state["next"] == 4
    second = session.run_state(engine, first.state, more=True)
    assert second.state["ids"][:4] == first.state["ids"] and len(second.state["ids"]) == 8
    assert len(set(second.state["ids"])) == 8
    assert second.state["ids"] == [h.id for h in engine.query("a kitchen").limit(8).run().hits]
    gallery = session.state_gallery(engine, second.state)
    assert len(gallery) == 8 and all(Path(url).is_file() for url, _ in gallery)
    assert "8 results" in second.message
    last = session.run_state(engine, second.state, more=True)  # 11 images: 4 + 4 + 3
    assert not last.page.has_more and len(last.state["ids"]) == engine.count()
    with pytest.raises(ClipSearchError, match="no more results"):
        session.run_state(engine, last.state, more=True)


def test_marks_accumulate_and_refine_reruns_with_them(engine: SearchEngine):
    state = session.run_state(engine, session.new_state("text", session.search_request("a red car", k=5))).state
    good, bad = state["ids"][3], state["ids"][0]
    state = session.mark(session.mark(state, good, True), bad, False)
    assert session.marks_note(state).startswith("**1 marked good, 1 marked bad**")
    refined = session.run_state(engine, state)
    assert bad not in refined.state["ids"]  # a result marked bad is left out
    assert refined.state["ids"] == [h.id for h in engine.query("a red car").like(good).unlike(bad).limit(5).run().hits]
    # a second round keeps the first round's marks; marking an image again changes its mark
    state = session.mark(refined.state, refined.state["ids"][1], True)
    state = session.mark(state, bad, True)
    assert len(state["good"]) == 3 and state["bad"] == []
    assert "3 marked good, 0 marked bad" in session.run_state(engine, state).message
    with pytest.raises(ClipSearchError, match="open a result"):
        session.mark(state, None, True)


def test_image_query_with_words(engine: SearchEngine, photos: list[Path]):
    data = photos[3].read_bytes()
    results = session.run_state(engine, session.new_state("image", {"text": "at night", "k": 5}, image=True), data)
    expected = engine.query(image=data).plus("at night").limit(5).run()
    assert results.state["ids"] == [h.id for h in expected.hits]
    assert "plus “at night”" in results.message
    more = session.run_state(engine, results.state, data, more=True)
    assert len(more.state["ids"]) == 10


def test_session_state_is_small(engine: SearchEngine):
    """What a visitor's session keeps between rounds is the query and ids, never galleries or hit dicts."""
    state = session.run_state(engine, session.new_state("text", session.search_request("a dog", "people", k=11))).state
    state = session.mark(state, state["ids"][0], True)
    assert set(state) == {"kind", "request", "image", "source", "ids", "scores", "probabilities", "next", "good", "bad"}
    assert len(json.dumps(state)) < 1500


def test_query_json_as_text_or_object(engine: SearchEngine, photos: list[Path]):
    page = handlers.run_query_json(engine, '{"text": "a dog", "minus": ["people"], "k": 3}')
    expected = engine.query("a dog").minus("people").limit(3).run()
    assert [h["id"] for h in page["hits"]] == [h.id for h in expected.hits]
    assert page["has_more"] and page["next_start"] == 3
    assert all("/" not in (h["source"] or "") for h in page["hits"])  # file names, not server folders
    page2 = handlers.run_query_json(engine, {"text": "a dog", "minus": ["people"], "k": 3, "page": 2})
    assert [h["id"] for h in page2["hits"]] == [
        h.id for h in engine.query("a dog").minus("people").limit(6).run().hits
    ][3:]
    with_image = handlers.run_query_json(
        engine, {"text": "at night", "k": 2}, str(photos[2]), url_for=lambda u: "x" + u
    )
    assert with_image["query"]["parts"][1] == {"image": True, "weight": 1.0}
    assert all(h["url"].startswith("x") for h in with_image["hits"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"text": "a dog", ', "not valid JSON"),
        ("", "give the query as JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"txt": "a dog"}', "unknown query field txt"),
        ('{"text": "a dog", "filters": {"after": "yesterday"}}', "is not a date"),
    ],
)
def test_bad_query_json_says_what_is_wrong(engine: SearchEngine, payload: str, message: str):
    with pytest.raises(InvalidQueryError, match=message):
        handlers.run_query_json(engine, payload)
