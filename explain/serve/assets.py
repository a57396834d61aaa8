"""The files the service serves that are not results: the page at ``/`` (package data in
``explain/serve/static/``: HTML, script, style; no CDN, so it works offline and from a wheel),
the same page at ``/jobs/{id}`` opened on that job's result (a link to share; its ``<base
href="../">`` keeps the page's relative URLs pointing at the service's root, also behind a
path prefix; the page itself holds no data: the job is fetched with the viewer's token)
and the API docs at ``/docs`` (Swagger UI from the ``fastapi-offline`` package's own copy,
not a CDN).

Every file is read once, when the app is made, into a fixed table; a request names a key of
that table, never a path.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from explain.serve.jobs import is_job_id

PAGE = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
DOCS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
        "swagger-ui.css": "text/css; charset=utf-8", "favicon.png": "image/png"}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: "
               "data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")
JOB_PAGE_POLICY = PAGE_POLICY.replace("base-uri 'none'", "base-uri 'self'")


def _docs_folder() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


class Assets:
    """The page's and the docs' files, read into memory (see the module docstring)."""

    def __init__(self) -> None:
        static = files("explain.serve") / "static"
        self.index = (static / "index.html").read_bytes()
        self.job = self.index.replace(b"<head>\n", b'<head>\n<base href="../">\n', 1)
        self.page = {name: (static / name).read_bytes() for name in PAGE}
        docs = _docs_folder()
        self.docs = {name: (docs / name).read_bytes() for name in DOCS}

    def mount(self, app: FastAPI) -> None:
        """Add ``/``, ``/static/{name}``, ``/docs`` and ``/docs/{name}`` to ``app``."""

        @app.get("/", include_in_schema=False)
        def page() -> Response:
            return _page(self.index, PAGE_POLICY)

        @app.get("/jobs/{job_id}", include_in_schema=False)
        def job_page(job_id: str) -> Response:
            if not is_job_id(job_id):
                raise HTTPException(404, "no such job")
            return _page(self.job, JOB_PAGE_POLICY)

        @app.get("/static/{name}", include_in_schema=False)
        def page_file(name: str) -> Response:
            return _answer(self.page, PAGE, name)

        @app.get("/docs", include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json",
                                       title="explain API", swagger_js_url="docs/swagger-ui-"
                                       "bundle.js", swagger_css_url="docs/swagger-ui.css",
                                       swagger_favicon_url="docs/favicon.png")

        @app.get("/docs/{name}", include_in_schema=False)
        def docs_file(name: str) -> Response:
            return _answer(self.docs, DOCS, name)


def _page(html: bytes, policy: str) -> Response:
    return Response(html, media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": policy,
                             "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def _answer(table: dict[str, bytes], types: dict[str, str], name: str) -> Response:
    if name not in table:
        raise HTTPException(404, "no such file")
    return Response(table[name], media_type=types[name],
                    headers={"X-Content-Type-Options": "nosniff",
                             "Cache-Control": "public, max-age=300"})
