"""Hide secrets in text that is printed, logged or stored (errors, MLflow params, logs).

    redact("postgresql+psycopg://user:s3cret@db:5432/optuna")  -> "postgresql+psycopg://user:***@db:5432/optuna"
    redact("http://:tok@host/x?password=abc&db=1")            -> "http://:***@host/x?password=***&db=1"

The password of a URL's user-info (`scheme://user:password@host`, the password quoted
or not: `p@ss`, `a/b:c`, `a%40b`) and the value of a `password=` / `token=` / `secret=`
query or key=value pair are replaced by `***`; the user, host, port and database stay,
so that a message still says which server it means.

May import: nothing
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host : a password that was not URL-quoted may hold '@', ':', '/',
# '?' and '#', and readers disagree on where it ends (SQLAlchemy stops at the first '@',
# the person who wrote it meant the last). So the mask covers every reading: from the
# user's ':' through the last '@' of the URL (up to a space) that is followed by a host
# (no '@', '/', '?', '#' before the next one of '/?#', a space or the end). The price: a
# URL with a password and an '@' further on (`http://u:pw@h/a@b`) is masked up to that
# later '@'; showing a password is the worse mistake.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):"
                       r"(?P<secret>\S*)@(?=[^@/?#\s]*(?:[/?#\s]|$))")
# key=value pairs (URL query strings, libpq "password=..." strings, ini lines).
_KEYVALUE = re.compile(r"(?P<head>\b\w*(?:password|passwd|pwd|token|secret|api[_-]?key)\w*\s*[=:]\s*['\"]?)"
                       r"(?P<secret>[^\s&;,'\"]+)",
                       re.IGNORECASE)


def redact(text: object) -> str:
    """`text` (anything; str() of it) with every URL password and `password=`-style
    value replaced by `***`."""
    text = str(text)
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["secret"] else m.group(0), text)
    return _KEYVALUE.sub(lambda m: f"{m['head']}{MASK}", text)
