"""``explain serve``: explanations as an asynchronous HTTP service, and its web page.

POST an image and a method's options, get a job id, poll it until the pictures are ready. The
parts: :mod:`~explain.serve.app` (the FastAPI app: routes, limits, auth), :mod:`~explain.serve.
jobs` (the SQLite job table and the job folders; all the SQL), :mod:`~explain.serve.worker`
(worker threads), :mod:`~explain.serve.batching` (occlusion windows of several jobs in one
model batch), :mod:`~explain.serve.security` (bind check, tokens, body limit),
:mod:`~explain.serve.served` (the model served), :mod:`~explain.serve.assets` and
``static/`` (the page, the docs' files). Needs the ``serve`` extra (fastapi, uvicorn,
python-multipart, fastapi-offline). Nothing in the library imports this package; the CLI
does, inside ``explain serve``.
"""

from explain.serve.app import Settings, create_app
from explain.serve.security import check_bind, load_tokens
from explain.serve.served import Served, serve_models

__all__ = ["Served", "Settings", "check_bind", "create_app", "load_tokens", "serve_models"]
