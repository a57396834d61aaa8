"""The one jinja2 environment of the project's HTML pages (the report and the audit page).

Templates come from ``explain/templates``; autoescaping is on, since file names, class names and
labels are untrusted text; an undefined name in a template is an error, never an empty string.
Only the modules that render a page import this one, so jinja2 is loaded only there.
"""

from __future__ import annotations

from collections.abc import Callable

import jinja2


def environment(*, finalize: Callable[[object], object] | None = None,
                filters: dict[str, Callable] | None = None) -> jinja2.Environment:
    """A fresh environment over the package's templates.

    ``finalize`` is applied to every value a template prints (the report passes each text
    through :func:`explain.files.display`); ``filters`` are added to jinja2's own by name.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("explain", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        finalize=finalize,
    )
    env.filters.update(filters or {})
    return env
