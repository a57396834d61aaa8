"""Collections and grid jobs of `explain serve`, for real: uvicorn in a subprocess on 127.0.0.1
with the real open_nsfw (onnx). A 40-image labelled collection's grid job writes the files
`explain grid` writes for the same files and options (equal cells, equal mosaic); an audit
job's scores.csv is `explain audit`'s; tenants do not see each other's collections; a bad file
is rejected by name and the rest added; a grid job killed with ``kill -9`` finishes after a
restart, and so does the audit queued behind it, killed in its turn."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_client import Server, png
from test_grid import crops
from test_report_browser import Browser
from test_serve import wait_js
from typer.testing import CliRunner

from explain.cli import app
from explain.images import iter_image_files
from explain.serve.collections import CollectionStore
from explain.serve.jobs import JobStore
from explain.serve.security import BodyLimit

if importlib.util.find_spec("fastapi") is None:  # under CI a missing extra fails, never skips
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError("the serve extra is not installed: pip install -e '.[dev]'")
    pytest.skip("the serve extra is not installed (pip install -e '.[dev]')",
                allow_module_level=True)

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210"
MAX_COLLECTION = 41
MAX_UPLOAD = 200_000  # bytes of one file; a request of many files may carry more


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Two tenants, 1,000,000 pixels and 200 kB a file at most, 41 images per collection."""
    root = tmp_path_factory.mktemp("collections")
    tokens = root / "tokens.txt"
    tokens.write_text(f"{ALICE}\n{BOB}\n")
    s = Server(root / "data", "--tokens", str(tokens), "--max-pixels", "1000000",
               "--max-upload-mb", str(MAX_UPLOAD / 1e6),
               "--max-collection", str(MAX_COLLECTION)).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def labelled(photos, tmp_path_factory) -> tuple[Path, list[Path]]:
    """40 crops of the three photos in DIR/<photo>/NN.png, and the files in `explain grid`'s
    order."""
    root = tmp_path_factory.mktemp("forty") / "images"
    images, labels = crops(photos, 40, seed=3)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / label / f"{i:02d}.png")
    return root, list(iter_image_files([root]))


def make_collection(server: Server, token: str, name: str = "forty") -> str:
    reply = server.call("POST", "/v1/collections", token=token, json_body={"name": name})
    assert reply.status == 201, reply.body
    assert reply.headers["location"] == f"/v1/collections/{reply.json()['id']}"
    return reply.json()["id"]


def upload(server: Server, collection: str, root: Path, paths: list[Path], token: str,
           labelled: bool = True) -> dict:
    files = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in paths]
    labels = [p.parent.name for p in paths] if labelled else None
    reply = server.add_images(collection, files, labels, token=token)
    assert reply.status == 201, reply.body
    return reply.json()


def grid_job(server: Server, token: str, **fields: str) -> str:
    reply = server.call("POST", "/v1/visualizations", token=token,
                        fields={"method": "grid", **fields})
    assert reply.status == 202, reply.body
    return reply.json()["id"]


@pytest.mark.slow
def test_a_grid_job_writes_what_explain_grid_writes(server, labelled, nsfw_onnx, tmp_path,
                                                    monkeypatch):
    root, paths = labelled
    assert sum(p.stat().st_size for p in paths) > 2 * MAX_UPLOAD  # one request, many files
    collection = make_collection(server, ALICE)
    assert upload(server, collection, root, paths, ALICE) == {"added": 40, "rejected": []}
    info = server.call("GET", f"/v1/collections/{collection}", token=ALICE).json()
    assert (info["name"], info["images"], info["labelled"]) == ("forty", 40, 40)
    assert info["bytes"] == sum(p.stat().st_size for p in paths)

    job_id = grid_job(server, ALICE, collection=collection, layout="tsne-jv",
                      color_by="label")
    seen = set()
    while (job := server.call("GET", f"/v1/visualizations/{job_id}", token=ALICE).json()
           )["status"] not in ("done", "failed"):
        seen.add((job["status"], job["progress"]["total"] > 0))
        time.sleep(0.05)
    assert job["status"] == "done", job["error"]
    assert set(job["results"]) == {"grid.png", "grid.json", "grid.html"}
    assert job["progress"]["done"] == job["progress"]["total"] > 40
    assert seen <= {("queued", False), ("running", False), ("running", True)}

    monkeypatch.setattr("explain.cli.common.load_model", lambda *a, **k: nsfw_onnx)
    out = tmp_path / "cli" / "grid.png"
    ran = CliRunner().invoke(app, ["grid", str(root), "-o", str(out), "--layout", "tsne-jv",
                                   "--color-by", "label"])
    assert ran.exit_code == 0, ran.output

    served = json.loads(server.call("GET", job["results"]["grid.json"], token=ALICE).body)
    local = json.loads(out.with_suffix(".json").read_text())
    relative = {Path(name).relative_to(root).as_posix(): entry
                for name, entry in local["images"].items()}
    assert len(served["images"]) == 40
    assert {name: e["cell"] for name, e in served["images"].items()} == \
        {name: e["cell"] for name, e in relative.items()}
    assert {name: e["label"] for name, e in served["images"].items()} == \
        {name: e["label"] for name, e in relative.items()}
    for key in ("rows", "cols", "embed", "layout", "quality", "perplexity", "seed"):
        assert served[key] == local[key], key

    mosaic = server.call("GET", job["results"]["grid.png"], token=ALICE)
    assert mosaic.status == 200 and mosaic.headers["content-type"] == "image/png"
    assert mosaic.body == out.read_bytes()

    page = server.call("GET", job["results"]["grid.html"], token=ALICE)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "unsafe-inline" in page.headers["content-security-policy"]
    tile = server.call("GET", f"/v1/visualizations/{job_id}/grid_tiles/0/0_0.jpg", token=ALICE)
    assert tile.status == 200 and tile.headers["content-type"] == "image/jpeg"
    assert tile.body == (out.parent / "grid_tiles" / "0" / "0_0.jpg").read_bytes()
    for bad in ("grid_tiles/0/0_0.png", "grid_tiles/0/..%2Fgrid.json", "grid_tiles/x/0_0.jpg",
                "overlay.png", "members.json"):
        assert server.call("GET", f"/v1/visualizations/{job_id}/{bad}",
                           token=ALICE).status in (404, 422), bad
    assert server.call("GET", job["results"]["grid.json"], token=BOB).status == 404

    # deleting the collection leaves the job's files; the job's listing is unchanged
    assert server.call("DELETE", f"/v1/collections/{collection}", token=ALICE).status == 204
    assert server.call("GET", f"/v1/collections/{collection}", token=ALICE).status == 404
    assert server.call("GET", job["results"]["grid.png"], token=ALICE).body == mosaic.body
    assert not (server.data / "collections" / collection).exists()


def test_collections_are_the_tenants_own(server):
    mine = make_collection(server, ALICE, "alice's")
    unknown = "00000000-0000-4000-8000-000000000000"
    for path in (f"/v1/collections/{mine}", f"/v1/collections/{unknown}"):
        for method in ("GET", "DELETE"):
            reply = server.call(method, path, token=BOB)
            assert (reply.status, reply.json()) == (404, {"detail": "no such collection"})
    tiny = png(np.full((8, 8, 3), 99, np.uint8))
    for target in (mine, unknown, "../../jobs"):
        reply = server.add_images(target, [("a.png", tiny)], token=BOB)
        assert reply.status == 404, target
    reply = server.call("POST", "/v1/visualizations", token=BOB,
                        fields={"method": "grid", "collection": mine})
    assert reply.status == 422 and reply.json()["detail"][0]["msg"] == "no such collection"
    assert [c["id"] for c in server.call("GET", "/v1/collections", token=BOB).json()["items"]
            if c["id"] == mine] == []
    assert mine in [c["id"] for c in
                    server.call("GET", "/v1/collections", token=ALICE).json()["items"]]
    assert server.call("GET", "/v1/collections").status == 401
    assert server.call("GET", f"/v1/collections/{mine}", token=ALICE).json()["name"] == \
        "alice's"


def test_bad_files_are_rejected_by_name_and_the_rest_added(server, photos):
    collection = make_collection(server, ALICE, "mixed")
    good = [png(np.ascontiguousarray(photos["coffee"][i * 20:i * 20 + 40, :40]))
            for i in range(3)]
    huge = png(np.zeros((1001, 1000, 3), np.uint8))  # over --max-pixels 1,000,000
    noise = png(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    assert len(noise) > MAX_UPLOAD
    files = [("one.png", good[0]), ("notes.txt", b"just some text, not an image"),
             ("empty.jpg", b""), ("huge.png", huge), ("two.png", good[1]),
             ("one.png", good[2]), ("noise.png", noise)]
    reply = server.add_images(collection, files, ["a", "b", "c", "d", "", "f", "g"],
                              token=ALICE)
    assert reply.status == 201
    answer = reply.json()
    assert answer["added"] == 2
    reasons = {r["name"]: r["reason"] for r in answer["rejected"]}
    assert list(reasons) == ["notes.txt", "empty.jpg", "huge.png", "one.png", "noise.png"]
    assert reasons["noise.png"] == f"the upload is over the limit of {MAX_UPLOAD:,} bytes"
    assert "not an image" in reasons["notes.txt"] or "cannot" in reasons["notes.txt"]
    assert "empty" in reasons["empty.jpg"]
    assert "1,001,000" in reasons["huge.png"] or "pixels" in reasons["huge.png"]
    assert reasons["one.png"] == "the collection already has an image of this name"
    info = server.call("GET", f"/v1/collections/{collection}", token=ALICE).json()
    assert (info["images"], info["labelled"]) == (2, 1)  # "two.png" came with an empty label
    folder = server.data / "collections" / collection
    assert len(list(folder.iterdir())) == 2  # no file of a rejected image is kept

    reply = server.add_images(collection, [("x.png", good[0])], ["a", "b"], token=ALICE)
    assert reply.status == 422 and reply.json()["detail"][0]["loc"] == ["body", "label"]
    few = server.call("POST", "/v1/visualizations", token=ALICE,
                      fields={"method": "grid", "collection": collection})
    assert few.status == 422 and "at least 4" in few.json()["detail"][0]["msg"]
    audit = server.call("POST", "/v1/visualizations", token=ALICE,
                        fields={"method": "audit", "collection": collection})
    assert audit.status == 422
    assert audit.json()["detail"][0]["msg"] == ("image 'one.png' is labelled 'a', not a class "
                                                "of the model (sfw, nsfw); an audit needs "
                                                "those labels")
    no_image = server.call("POST", "/v1/visualizations", token=ALICE,
                           fields={"method": "occlusion"})
    assert no_image.status == 422 and no_image.json()["detail"][0]["loc"] == ["body", "image"]

    tiny = png(np.full((8, 8, 3), 7, np.uint8))
    many = [(f"{i:02d}.png", tiny) for i in range(MAX_COLLECTION)]
    answer = server.add_images(collection, many, token=ALICE).json()
    assert answer["added"] == MAX_COLLECTION - 2
    assert [r["name"] for r in answer["rejected"]] == ["39.png", "40.png"]
    assert {r["reason"] for r in answer["rejected"]} == {
        f"the collection is full ({MAX_COLLECTION} images at most)"}


def test_the_tenants_bytes_are_limited(tmp_path):
    """The store's quota: bytes over all a tenant's collections, one statement per image."""
    jobs = JobStore(tmp_path)  # the data folder's owner
    store = CollectionStore(tmp_path)
    try:
        a, b = store.create("t", "a"), store.create("t", "b")
        other = store.create("u", "c")
        for collection, size, expected in ((a, 60, None), (b, 40, None), (other, 90, None)):
            image_id, path = store.new_image(collection)
            path.write_bytes(b"x" * size)
            assert store.add(collection, "t" if collection != other else "u", image_id,
                             f"{size}.png", None, size, 10, 100) is expected
        image_id, path = store.new_image(b)
        path.write_bytes(b"x")
        why = store.add(b, "t", image_id, "one.png", None, 1, 10, 100)
        assert why == "over your storage quota (100 bytes for all your collections; 100 used)"
        assert not path.exists()
        assert store.used("t") == 100 and store.used("u") == 90
        assert store.get(a, "u") is None and store.delete(a, "u") is False
        (store.folder(a) / "stray").write_bytes(b"left by a kill")
        assert store.remove_orphans() == 1
        assert store.delete(a, "t") and store.used("t") == 40
    finally:
        store.close()
        jobs.close()


def test_only_a_collections_images_get_the_batch_limit():
    limits = BodyLimit(None, 10, batch=100)  # type: ignore[arg-type]
    assert limits.limit_for("/v1/collections/C/images") == 100
    for path in ("/v1/visualizations", "/v1/collections", "/v1/collections/C",
                 "/v1/collections/C/images/x", "/x/v1/collections/C/images"):
        assert limits.limit_for(path) == 10, path


@pytest.mark.slow
def test_an_audit_job_writes_what_explain_audit_writes(server, photos, nsfw_onnx, tmp_path,
                                                       monkeypatch):
    root = tmp_path / "audit-data"
    images, names = crops(photos, 12, seed=5)
    for i, (image, photo) in enumerate(zip(images, names, strict=True)):
        label = "nsfw" if photo == "chelsea" else "sfw"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / label / f"{i:02d}.png")
    paths = list(iter_image_files([root]))
    collection = make_collection(server, ALICE, "to audit")
    upload(server, collection, root, paths, ALICE)
    reply = server.call("POST", "/v1/visualizations", token=ALICE, fields={
        "method": "audit", "collection": collection, "threshold": "0.3", "top": "2",
        "concepts": "false", "cues": "false"})
    assert reply.status == 202, reply.body
    job_id = reply.json()["id"]
    stages = set()
    while (job := server.call("GET", f"/v1/visualizations/{job_id}", token=ALICE).json()
           )["status"] not in ("done", "failed"):
        stages.add(job["progress"]["stage"])
        time.sleep(0.05)
    assert job["status"] == "done", job["error"]
    assert stages & {"scoring", "starting"}, stages
    assert {"audit.html", "scores.csv", "metrics.json"} <= set(job["results"])
    assert "concepts.csv" not in job["results"]

    monkeypatch.setattr("explain.cli.common.load_model", lambda *a, **k: nsfw_onnx)
    out = tmp_path / "cli-audit"
    ran = CliRunner().invoke(app, ["audit", str(root), "-o", str(out), "--threshold", "0.3",
                                   "--top", "2", "--no-concepts", "--no-cues", "--quiet"])
    assert ran.exit_code == 0, ran.output

    served = server.call("GET", job["results"]["scores.csv"], token=ALICE).body.decode()
    local = (out / "scores.csv").read_text()
    member = {f"images/{i:05d}": p.relative_to(root).as_posix() for i, p in enumerate(paths)}

    def rows(text: str, name: Callable[[str], str]) -> dict[str, list[str]]:
        table = list(csv.reader(io.StringIO(text)))
        return {name(row[0]): row[1:] for row in table[1:]} | {"header": table[0]}

    by_member = rows(served, lambda p: member[Path(p).relative_to(
        server.data / "jobs" / job_id).as_posix()])
    by_path = rows(local, lambda p: Path(p).relative_to(root).as_posix()
                   if Path(p).is_absolute() else p)
    assert len(by_member) == 13 and by_member == by_path
    page = server.call("GET", job["results"]["audit.html"], token=ALICE)
    assert page.status == 200 and b"<html" in page.body
    assert "img-src data:" in page.headers["content-security-policy"]
    metrics = json.loads(server.call("GET", job["results"]["metrics.json"], token=ALICE).body)
    assert metrics["threshold"] == 0.3


@pytest.mark.slow
def test_an_audit_job_that_measured_nothing_fails(server, tmp_path):
    """Every image of the collection is cut short after its header (accepted at upload, where
    only the header is read; unreadable when decoded): the audit job fails with the sentence
    `explain audit` exits 2 with, not ``done``."""
    root = tmp_path / "cut"
    (root / "sfw").mkdir(parents=True)
    paths = []
    for i in range(2):
        whole = png(np.full((40, 40, 3), 60 * i, np.uint8))
        paths.append(root / "sfw" / f"{i}.png")
        paths[-1].write_bytes(whole[:len(whole) // 2])
    collection = make_collection(server, ALICE, "cut short")
    upload(server, collection, root, paths, ALICE)
    reply = server.call("POST", "/v1/visualizations", token=ALICE, fields={
        "method": "audit", "collection": collection, "top": "0", "concepts": "false",
        "cues": "false"})
    assert reply.status == 202, reply.body
    job = server.wait(reply.json()["id"], token=ALICE)
    assert job["status"] == "failed", job
    assert job["error"] == ("none of the 2 images could be read and scored: the audit measured "
                            "nothing (errors.csv says why)")


def test_grid_and_audit_jobs_killed_mid_run_finish_after_a_restart(labelled, tmp_path):
    root, paths = labelled
    first = Server(tmp_path / "data").start()
    try:
        collection = make_collection(first, "")
        upload(first, collection, root, paths, "", labelled=False)
        job_id = grid_job(first, "", collection=collection, layout="tsne-jv",
                          color_by="none")
        reply = first.call("POST", "/v1/visualizations", fields={
            "method": "audit", "collection": collection, "top": "0", "concepts": "false",
            "cues": "false"})
        assert reply.status == 202, reply.body
        audit_id = reply.json()["id"]
        job = first.wait(job_id, until=("running", "done", "failed"))
        assert job["status"] == "running"
    finally:
        first.kill()
    second = Server(tmp_path / "data").start()
    try:
        job = second.wait(job_id)
        assert job["status"] == "done", job["error"]
        doc = json.loads(second.call("GET", job["results"]["grid.json"]).body)
        assert sorted(doc["images"]) == sorted(p.relative_to(root).as_posix() for p in paths)
        audit = second.wait(audit_id, until=("running", "done", "failed"))
        assert audit["status"] == "running"
    finally:
        second.kill()
    third = Server(tmp_path / "data").start()
    try:
        audit = third.wait(audit_id)
        assert audit["status"] == "done", audit["error"]
        scores = third.call("GET", audit["results"]["scores.csv"]).body.decode()
        assert len(scores.splitlines()) == 41  # the header and the 40 images, unlabelled
        assert not list((tmp_path / "data").rglob("*.part"))
    finally:
        third.stop()


@pytest.mark.slow
def test_the_page_makes_a_collection_from_a_folder_and_opens_its_grid(photos, chromium,
                                                                      tmp_path):
    """Chromium: a folder picked (its sub-folders are the labels, a text file in it rejected by
    name), the collection listed, a grid started from its row, its mosaic shown, and the grid
    viewer opened with its tiles."""
    root = tmp_path / "pets"
    images, names = crops(photos, 9, seed=7)
    for i, (image, photo) in enumerate(zip(images, names, strict=True)):
        (root / photo).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / photo / f"{i}.png")
    (root / "coffee" / "notes.txt").write_text("not an image")
    server = Server(tmp_path / "data").start()
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(server.base + "/")
        browser.deadline += 120
        wait_js(browser, "!document.getElementById('make').disabled")
        document = browser.page("DOM.getDocument")["root"]["nodeId"]
        node = browser.page("DOM.querySelector", nodeId=document, selector="#folder")["nodeId"]
        browser.page("DOM.setFileInputFiles", nodeId=node, files=[str(root)])
        assert wait_js(browser, "document.getElementById('files-name').textContent") == \
            "10 files, 10 in sub-folders (labelled)"
        assert browser.evaluate("document.getElementById('collection-name').value") == "pets"
        browser.evaluate("document.getElementById('make').click(); true")
        message = wait_js(browser, "document.getElementById('collection-message').textContent"
                          ".startsWith('Collection') && document.getElementById("
                          "'collection-message').textContent")
        assert message == 'Collection "pets": 9 images added, 1 rejected.'
        assert browser.evaluate("document.getElementById('rejected').textContent").startswith(
            "coffee/notes.txt: ")
        listed = server.call("GET", "/v1/collections").json()["items"]
        assert [(c["name"], c["images"], c["labelled"]) for c in listed] == [("pets", 9, 9)]
        wait_js(browser, "document.querySelector('#collection-list .do-grid')")
        browser.evaluate("document.querySelector('#collection-list .do-grid').click(); true")
        assert wait_js(browser, "document.getElementById('mosaic').naturalWidth") > 0
        link = wait_js(browser, "document.querySelector('#open a') && "
                                "document.querySelector('#open a').href")
        assert link.endswith("/grid.html")
        browser.open(link)
        assert wait_js(browser, "window.gridTiles && window.gridTiles.loaded") > 0
        assert browser.evaluate("window.gridTiles.failed") == 0
        assert browser.console_errors() == []
    finally:
        browser.close()
        server.stop()
