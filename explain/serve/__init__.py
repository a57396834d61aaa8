"""``explain serve``: explanations as an asynchronous HTTP service, and its web page.

POST an image and a method's options, get a job id, poll it until the pictures are ready; or
upload a collection of images and run a grid job over it (the files of ``explain grid``). The
parts: ``app`` (the FastAPI app: routes, limits, auth, the workers' supervisor), ``jobs`` (the
SQLite job table, the job folders and their locks; all its SQL), ``collections`` (the tenants'
collections: their table, all its SQL, and their files), ``worker`` (worker threads, grid jobs,
cancellation, result files), ``batching`` (occlusion windows of several jobs in one model
batch), ``security`` (bind check, tokens, body limit and upload timeout, rate-limited log),
``served`` (the model served), ``schemas`` (the answers' shapes), ``assets`` and ``static/``
(the page, the docs' files). ``app``, ``assets`` and ``schemas`` need the ``serve`` extra
(fastapi, uvicorn, python-multipart, fastapi-offline); the rest does not, so this package
imports nothing itself. Nothing in the library imports it; the CLI does, inside
``explain serve``.
"""
