"""The library's progress callbacks: the library never prints, it calls one of these.

:data:`Progress` is the one type: ``progress(done, total)`` after each unit of work (a batch of
windows or masks, an image), ``done`` counting up to ``total``; a CLI turns it into a bar.
:data:`LabelledProgress` is the same call with a label saying what was just done (the report's
``progress(done, total, label)``, one label per method and image), for callers that show more
than a count. Either may be None where a function takes one: then nothing is reported.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
LabelledProgress = Callable[[int, int, str], None]
