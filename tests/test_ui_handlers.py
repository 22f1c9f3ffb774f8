"""The app's handlers, called as the UI calls them (engine + plain values), without a server or a browser."""

from __future__ import annotations

import io
import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from clip_search.access import ADMIN_TOKEN_ENV, UPLOAD_TOKEN_ENV
from clip_search.app import build, guard, handlers, text, uploads
from clip_search.engine import SearchEngine
from clip_search.errors import ClipSearchError, EmptyQueryError, InvalidImageError, NotFoundError
from clip_search.ingest import ingest_paths
from clip_search.urlfetch import UrlFetchError
from tests.conftest import make_settings, shared_data


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))


def _engine(tmp_path: Path, model_dir: Path, **sections: dict) -> SearchEngine:
    sections.setdefault("upload", {"near_duplicate_threshold": 0.9999})
    return SearchEngine(make_settings(tmp_path / "data", model_dir, **sections))


@pytest.fixture
def engine(tmp_path: Path, tiny_model_dir: Path, photos: list[Path]):
    eng = _engine(tmp_path, tiny_model_dir)
    ingest_paths(eng, photos[:8], progress=False)
    yield eng
    eng.close()


@pytest.fixture
def empty_engine(tmp_path: Path, tiny_model_dir: Path):
    eng = _engine(tmp_path, tiny_model_dir)
    yield eng
    eng.close()


def _request(host: str = "203.0.113.7", headers: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(client=SimpleNamespace(host=host), headers=headers or {})


# -- formatting ---------------------------------------------------------------------------------------------------


def test_percent_and_captions_are_honest():
    assert text.percent(0.874) == "87%"
    assert text.percent(0.001) == "<1%"
    assert text.percent(0.9999) == ">99%"
    text_hit = SimpleNamespace(probability=0.874, score=0.3112)
    image_hit = SimpleNamespace(probability=None, score=0.9312)
    assert text.hit_caption(text_hit) == "87% match · 0.31"
    assert text.hit_caption(image_hit) == "similarity 0.93"


def test_markdown_from_visitors_is_shown_literally():
    assert text.md_escape("**bold** <b>x</b> [link](http://x)") == (r"\*\*bold\*\* \<b\>x\</b\> \[link\]\(http://x\)")


def test_header_shows_size_model_and_api_link(engine: SearchEngine):
    engine.settings.app.title = "<My> photos"
    header = text.header_html(engine)
    assert "&lt;My&gt; photos" in header and "<My>" not in header
    assert "8 images" in header
    assert "tiny-siglip" in header  # a local checkpoint shows its folder name, not the server's disk layout
    assert str(engine.settings.model.id) not in header
    assert 'href="?view=api"' in header


# -- search -------------------------------------------------------------------------------------------------------


def test_text_search_shows_probability_and_score(engine: SearchEngine):
    engine.settings.search.min_probability = 0.0
    results = handlers.text_search(engine, "a dog on a beach", 5)
    assert len(results.hits) == 5 and results.confident
    assert "5 results" in results.message and "a dog on a beach" in results.message
    items = results.gallery()
    assert all(Path(url).is_file() for url, _ in items)  # local store: files the app serves
    assert all(
        caption.endswith(f"· {hit.score:.2f}") and "match" in caption
        for hit, (_, caption) in zip(results.hits, items, strict=True)
    )
    first = results.as_dicts()[0]
    assert {"id", "score", "probability", "caption", "width", "height"} <= set(first)
    assert "/" not in (first["source"] or "")  # a file name, never a server path


def test_weak_matches_are_called_out_but_still_shown(engine: SearchEngine):
    engine.settings.search.min_probability = 1.0
    results = handlers.text_search(engine, "a purple elephant", 4)
    assert not results.confident
    assert "No good match" in results.message and "closest" in results.message
    assert len(results.hits) == 4 and len(results.gallery()) == 4


def test_no_good_match_never_says_the_best_is_a_near_certain_match():
    """With the threshold forced near 1, ">99%" is both a weak match and a near-certain one: say the figures."""
    assert text.best_below(0.31, 0.5) == "the best is a 31% match"
    assert text.best_below(0.995, 0.999) == "the best is a 99.5% match, below the 99.9% asked for here"
    assert text.best_below(0.9991, 0.9995) == "the best is a 99.91% match, below the 99.95% asked for here"
    assert text.best_below(0.9999, 1.0) == "the best is a 99.9% match, below the 100.0% asked for here"
    assert text.best_below(0.62, 0.65) == "the best is a 62% match"
    assert text.best_below(0.99899, 0.999) == "the best is a 99.8% match, below the 99.9% asked for here"


def test_empty_query_is_refused_in_plain_words(engine: SearchEngine):
    with pytest.raises(EmptyQueryError, match="empty"):
        handlers.text_search(engine, "   ", 5)


def test_empty_collection_says_how_to_add_photos(empty_engine: SearchEngine, photos: list[Path]):
    results = handlers.text_search(empty_engine, "a cat", 5)
    assert results.hits == [] and "Upload" in results.message and "ingest --samples" in results.message
    assert "Upload" in text.empty_notice(empty_engine)
    assert handlers.image_search(empty_engine, photos[0]).hits == []
    with pytest.raises(InvalidImageError):  # an unusable picture is still refused
        handlers.image_search(empty_engine, b"not an image")


def test_image_search_finds_the_image_itself_first(engine: SearchEngine, photos: list[Path]):
    results = handlers.image_search(engine, str(photos[3]), None, 3)
    assert results.hits[0].source.endswith(photos[3].name)
    assert results.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert results.gallery()[0][1] == "similarity 1.00"
    assert engine.count() == 8  # the query image is not stored


def test_image_search_needs_an_image(engine: SearchEngine):
    with pytest.raises(ClipSearchError, match="choose an image"):
        handlers.image_search(engine, None, "  ", 3)
    with pytest.raises(InvalidImageError):
        handlers.image_search(engine, b"\x89PNG garbage", None, 3)


def test_image_search_refuses_a_query_image_over_the_size_limit(engine: SearchEngine, tmp_path: Path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    engine.settings.upload.max_bytes = 1024
    with pytest.raises(ClipSearchError, match="too large"):
        handlers.image_search(engine, str(big), None, 3)


def test_a_text_file_named_jpg_is_refused_as_not_an_image(engine: SearchEngine, tmp_path: Path):
    """Said as soon as it is chosen (its preview would only look broken) and again if searched with."""
    notes = tmp_path / "notes.jpg"
    notes.write_text("milk, eggs, bread")
    for handler in (handlers.check_query_image, lambda e, image: handlers.image_search(e, image, None, 3)):
        with pytest.raises(InvalidImageError, match=r"^not a supported image format \(accepted: JPEG, PNG"):
            handler(engine, str(notes))
    handlers.check_query_image(engine, None)  # the box was cleared: nothing to say


def test_a_query_image_is_checked_from_its_header_when_chosen(engine: SearchEngine, tmp_path: Path):
    giant = tmp_path / "giant.png"
    Image.new("1", (8000, 6000)).save(giant)  # 48 MP, one bit per pixel: a small file over upload.max_pixels
    with pytest.raises(InvalidImageError, match=r"8000x6000 is 48\.0 megapixels"):
        handlers.check_query_image(engine, str(giant))


def test_result_counts_are_clamped_or_refused_in_words(engine: SearchEngine):
    assert len(handlers.text_search(engine, "a dog", 0).hits) == 1
    assert len(handlers.text_search(engine, "a dog", -5).hits) == 1
    assert len(handlers.text_search(engine, "a dog", 1e9).hits) == 8  # everything the collection holds
    assert len(handlers.text_search(engine, "a dog", "3").hits) == 3
    for bad in (float("nan"), "ten", ""):
        with pytest.raises(ClipSearchError, match="the number of results must be a number from 1 to 100"):
            handlers.text_search(engine, "a dog", bad)


@pytest.mark.parametrize("image_id", [1e20, -3, float("inf"), "seven", 2**64])
def test_ids_that_name_no_image_are_not_found(engine: SearchEngine, image_id: object):
    with pytest.raises(NotFoundError, match="no image with id"):
        handlers.more_like_this(engine, image_id, 3)
    with pytest.raises(NotFoundError, match="no image with id"):
        handlers.delete_image(engine, image_id)


def test_image_urls_to_private_addresses_are_refused(engine: SearchEngine):
    for url in ("http://127.0.0.1:9/x.jpg", "http://localhost/x.jpg", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(UrlFetchError, match="private or local"):
            handlers.image_search(engine, None, url, 3)
    with pytest.raises(UrlFetchError, match="http"):
        handlers.image_search(engine, None, "file:///etc/passwd", 3)
    engine.settings.app.allow_image_urls = False
    with pytest.raises(guard.NotAllowed, match="switched off"):
        handlers.image_search(engine, None, "https://example.com/x.jpg", 3)


def test_image_url_search_when_private_addresses_are_allowed(engine: SearchEngine, photos: list[Path], http_server):
    engine.settings.app.allow_private_urls = True
    base = http_server({"/p.jpg": photos[2].read_bytes()})
    results = handlers.image_search(engine, None, f"{base}/p.jpg", 2)
    assert results.hits[0].source.endswith(photos[2].name)


def test_more_like_this_excludes_the_image_itself(engine: SearchEngine):
    first = handlers.text_search(engine, "a kitchen", 1).hits[0]
    results = handlers.more_like_this(engine, float(first.id), 5)
    assert first.id not in [h.id for h in results.hits] and len(results.hits) == 5
    assert f"like image {first.id}" in results.message
    with pytest.raises(ClipSearchError, match="click a result"):
        handlers.more_like_this(engine, None, 5)
    with pytest.raises(NotFoundError):
        handlers.more_like_this(engine, 99999, 5)


def test_details_panel(engine: SearchEngine):
    hit = handlers.text_search(engine, "a bus", 1).as_dicts()[0]
    hit["caption"] = "a *bold* claim"
    hit["metadata"] = {"credit": "NASA, public domain", "captions": ["one", "two"]}
    details = text.describe_hit(hit)
    assert f"### Image {hit['id']}" in details and r"a \*bold\* claim" in details
    assert "| Match |" in details and "Credit" in details and "NASA" in details and "- two" in details
    assert text.describe_hit(None) == ""


# -- upload -------------------------------------------------------------------------------------------------------


def test_upload_reports_each_file_and_is_searchable_at_once(engine: SearchEngine, photos: list[Path], tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    png = tmp_path / "drawing.png"
    Image.open(photos[20]).convert("L").resize((64, 48)).save(png)
    seen = []
    outcome = uploads.upload_files(
        engine,
        [str(photos[10]), str(photos[0]), str(notes), str(png)],
        "my caption",
        on_progress=lambda done, total: seen.append((done, total)),
    )
    statuses = [r.status for r in outcome.results]
    assert statuses == ["added", "duplicate", "rejected", "added"]
    assert outcome.count == 10
    assert "2 added" in outcome.message and "1 already there" in outcome.message and "1 rejected" in outcome.message
    assert "notes.txt" in outcome.message and "the collection now holds **10 images**" in outcome.message
    assert [r["file"] for r in outcome.as_dicts()] == [photos[10].name, photos[0].name, "notes.txt", "drawing.png"]
    assert not outcome.as_dicts()[2]["message"].startswith("notes.txt")  # the table already names the file
    assert len(outcome.added) == 2 and all(Path(url).is_file() for url, _ in outcome.added)
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    added_id = outcome.results[0].id
    assert handlers.image_search(engine, str(photos[10]), None, 1).hits[0].id == added_id
    assert engine.get(added_id).caption == "my caption"


def test_upload_limits(engine: SearchEngine, photos: list[Path]):
    with pytest.raises(ClipSearchError, match="choose one or more") as info:
        uploads.upload_files(engine, [], None)
    # the browser silently keeps back a file over the limit: the message says so, in the browser's units too
    assert "a file over 20 MiB is refused by your browser, which writes that limit as “20.0 Mb”" in str(info.value)
    assert text.gradio_size(10 * 2**20) == "10.0 Mb" and text.gradio_size(1536) == "1.5 Kb"
    engine.settings.upload.max_files = 2
    outcome = uploads.upload_files(engine, [str(p) for p in photos[10:13]], None, allowed=1, wait_s=42)
    assert [r.status for r in outcome.results] == ["added", "rejected", "rejected"]
    assert "try again in 42 s" in outcome.results[1].message
    assert "at most 2" in outcome.results[2].message
    engine.settings.upload.max_bytes = 1000
    outcome = uploads.upload_files(engine, [str(photos[14])], None)
    assert outcome.results[0].status == "rejected" and "too large" in outcome.results[0].message


def test_add_samples_fills_an_empty_collection_once(empty_engine: SearchEngine):
    message = handlers.add_samples(empty_engine)
    assert empty_engine.count() >= 10 and "sample photos" in message
    assert "already holds" in handlers.add_samples(empty_engine)


def test_delete_image(engine: SearchEngine):
    hit = handlers.text_search(engine, "a cat", 1).hits[0]
    assert "Deleted image" in handlers.delete_image(engine, hit.id) and engine.count() == 7
    with pytest.raises(NotFoundError):
        handlers.delete_image(engine, hit.id)
    with pytest.raises(ClipSearchError, match="give the id"):
        handlers.delete_image(engine, None)


def test_public_stats_hide_paths(engine: SearchEngine):
    assert handlers.public_stats(engine) == {"images": 8, "model": "tiny-siglip"}


def test_the_api_page_names_what_stats_answers(engine: SearchEngine):
    endpoint = build.build_app(engine).get_api_info()["named_endpoints"]["/stats"]
    assert [r["label"] for r in endpoint["returns"]] == ["stats"]  # not "1st"
    assert '"images": int, "model": str' in endpoint["description"]


# -- access -------------------------------------------------------------------------------------------------------


def test_search_rate_limit_per_client(engine: SearchEngine):
    engine.settings.rate_limit.searches_per_minute = 2
    gate = guard.Gate(engine)
    gate.search(_request("198.51.100.1"))
    gate.search(_request("198.51.100.1"))
    with pytest.raises(guard.TooManyRequests, match=r"Too many searches .* try again in \d+ s"):
        gate.search(_request("198.51.100.1"))
    gate.search(_request("198.51.100.2"))  # another visitor is not affected


def test_proxy_header_only_when_configured(engine: SearchEngine):
    forwarded = _request("10.0.0.1", {"X-Forwarded-For": "1.2.3.4, 203.0.113.9"})
    assert guard.Gate(engine).client(forwarded) == "10.0.0.1"
    engine.settings.rate_limit.trusted_proxy_header = "x-forwarded-for"
    assert guard.Gate(engine).client(forwarded) == "203.0.113.9"


def test_upload_rate_limit_lets_part_of_a_batch_through(engine: SearchEngine, monkeypatch):
    monkeypatch.delenv(UPLOAD_TOKEN_ENV, raising=False)
    engine.settings.rate_limit.uploads_per_minute = 3
    gate = guard.Gate(engine)
    allowed, wait = gate.upload(_request(), 5, None)
    assert allowed == 3 and wait > 0
    with pytest.raises(guard.TooManyRequests, match="Too many uploads"):
        gate.upload(_request(), 1, None)


def test_upload_token(engine: SearchEngine, monkeypatch):
    monkeypatch.setenv(UPLOAD_TOKEN_ENV, "s3cret")
    gate = guard.Gate(engine)
    with pytest.raises(guard.NotAllowed, match="upload token"):
        gate.upload(_request(), 1, "wrong")
    assert gate.upload(_request(), 1, "s3cret") == (1, 0.0)


def test_admin_delete_needs_the_admin_token(engine: SearchEngine, monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    gate = guard.Gate(engine)
    with pytest.raises(guard.NotAllowed, match="switched off"):
        gate.delete(_request("192.0.2.1"), "anything")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "adm1n")
    with pytest.raises(guard.NotAllowed, match="admin token"):
        gate.delete(_request("192.0.2.2"), "nope")
    gate.delete(_request("192.0.2.2"), "adm1n")
    for _ in range(3):
        with pytest.raises(guard.NotAllowed):
            gate.delete(_request("192.0.2.2"), "guess")
    with pytest.raises(guard.TooManyRequests):  # guessing is slowed down
        gate.delete(_request("192.0.2.2"), "adm1n")


def test_errors_become_plain_messages_never_tracebacks(caplog):
    @guard.friendly
    def refuses() -> None:
        raise EmptyQueryError("the text query is empty: type a few words")

    @guard.friendly
    def crashes() -> None:
        raise RuntimeError("segfault in /srv/secret/path.py line 3")

    with pytest.raises(gr.Error) as info:
        refuses()
    assert info.value.message == "The text query is empty: type a few words"
    with pytest.raises(gr.Error) as info:
        crashes()
    assert info.value.message == guard.GENERIC_ERROR and "secret" not in info.value.message
    assert "segfault" in caplog.text  # logged for the operator


def test_storage_failures_reach_the_visitor_as_plain_words(private_s3_server, tmp_path, tiny_model_dir, photos, caplog):
    """SeaweedFS stopped: the visitor reads "storage unavailable"; endpoint, bucket and key stay in the log."""
    from tests.s3server import make_s3_settings, s3_environment

    server = private_s3_server
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_environment(server, None).items():
            if key.startswith("AWS_"):
                mp.setenv(key, value)
        bucket = server.new_bucket()
        engine = SearchEngine(make_s3_settings(tmp_path / "data", tiny_model_dir, server, bucket))
        try:
            upload = guard.friendly(uploads.upload_files)
            assert upload(engine, [photos[0]]).results[0].status == "added"
            server.stop()
            with pytest.raises(gr.Error) as info:
                upload(engine, [photos[1]])
        finally:
            engine.close()
    shown = f"{info.value.title} {info.value.message}"
    assert info.value.message == guard.STORAGE_UNAVAILABLE
    for detail in (server.endpoint, bucket, "127.0.0.1", "images/", "read_timeout_s"):
        assert detail not in shown
    assert server.endpoint in caplog.text  # the operator still learns what failed


# -- the app itself -----------------------------------------------------------------------------------------------


def _api_names(demo: gr.Blocks) -> set[str]:
    return {
        fn.api_name for fn in demo.fns.values() if fn.api_name and fn.api_visibility in ("public", "undocumented")
    } & {"search", "search_image", "more_like_this", "query", "upload", "add_samples", "delete", "stats"}


def test_build_app_names_every_action(engine: SearchEngine, monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    monkeypatch.delenv(UPLOAD_TOKEN_ENV, raising=False)
    demo = build.build_app(engine)
    assert _api_names(demo) == {"search", "search_image", "more_like_this", "query", "upload", "add_samples", "stats"}
    assert not _component(demo, "upload-token").visible  # no token configured: no token field
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "adm1n")
    monkeypatch.setenv(UPLOAD_TOKEN_ENV, "s3cret")
    demo = build.build_app(engine)
    assert "delete" in _api_names(demo)
    assert _component(demo, "upload-token").visible
    assert not _component(demo, "cs-add-samples").visible  # uploads need a token: no anonymous sample button


def _component(demo: gr.Blocks, elem_id: str) -> gr.components.Component:
    return next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id)


def test_presigned_urls_go_to_the_browser_untouched():
    """S3: the gallery hands the browser the presigned URL; the server never downloads the image."""
    from gradio import processing_utils

    url = "https://photos.s3.example.com/images/ab/abc.jpg?X-Amz-Expires=3600&X-Amz-Signature=deadbeef"
    gallery = gr.Gallery()
    data = gallery.postprocess([(url, "similarity 0.93")])
    out = processing_utils.move_files_to_cache(data.model_dump(), gallery, postprocess=True)
    assert out[0]["image"]["url"] == url


def test_persistent_storage_on_spaces(tmp_path: Path, monkeypatch):
    import app as app_module

    for var in ("HF_HOME", "CLIP_SEARCH_DATA_DIR", "SPACE_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(app_module, "PERSISTENT", tmp_path / "missing")
    app_module.use_persistent_storage()
    assert "HF_HOME" not in os.environ
    monkeypatch.setattr(app_module, "PERSISTENT", tmp_path)
    app_module.use_persistent_storage()
    assert os.environ["HF_HOME"] == str(tmp_path / ".huggingface")
    assert "CLIP_SEARCH_DATA_DIR" not in os.environ  # /data elsewhere than on Spaces may be anything
    monkeypatch.setenv("SPACE_ID", "someone/clip-search")
    app_module.use_persistent_storage()
    assert os.environ["CLIP_SEARCH_DATA_DIR"] == str(tmp_path / "clip-search")


def test_launch_options_serve_only_the_image_folder(engine: SearchEngine):
    options = build.launch_options(engine)
    assert options["allowed_paths"] == [str(engine.store.root)]
    assert options["max_file_size"] == engine.settings.upload.max_bytes
    assert "theme" in options and "css" in options
    assert options["state_session_capacity"] == engine.settings.app.max_sessions  # not Gradio's 10,000


# -- a small local web server for the URL tests -------------------------------------------------------------------


@pytest.fixture
def http_server():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(routes: dict[str, bytes]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def test_png_bytes_are_a_valid_query(engine: SearchEngine, photos: list[Path]):
    buffer = io.BytesIO()
    Image.open(photos[1]).save(buffer, format="PNG")
    assert handlers.image_search(engine, buffer.getvalue(), None, 1).hits[0].source.endswith(photos[1].name)
