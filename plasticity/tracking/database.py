"""Fail fast on a PostgreSQL store that cannot be used (MLflow's `--tracking-uri`, Optuna's
`--storage`): one connection with a short timeout, before MLflow or SQLAlchemy retry for
minutes and print pages of their own.

    problem = postgres_problem("postgresql+psycopg://user:pw@db:5432/mlflow")
    if problem:
        raise TrackingError(f"{problem}: start the server or fix --tracking-uri")

Uses psycopg 3 (the driver the sweep extras install); without it nothing is probed.
"""

from __future__ import annotations

from plasticity.errors import error_line
from plasticity.redact import redact

SCHEMES = ("postgresql", "postgres")
"""URI schemes (before any `+driver`) of a PostgreSQL store."""

CONNECT_TIMEOUT_S = 5


def is_postgres(uri: str) -> bool:
    return uri.partition("://")[0].partition("+")[0].lower() in SCHEMES and "://" in uri


def postgres_problem(uri: str, timeout: int = CONNECT_TIMEOUT_S) -> str | None:
    """Why the PostgreSQL database of `uri` cannot be used, in one line without the password
    (`cannot reach the PostgreSQL server at host:port (connection refused)`), or None if a
    connection opens (or `uri` is not a PostgreSQL URI, or psycopg is not installed)."""
    if not is_postgres(uri):
        return None
    try:
        import psycopg
        from sqlalchemy.engine import make_url
    except ImportError:
        return None
    try:
        url = make_url(uri)
    except Exception as e:  # noqa: BLE001 - any parse failure means a malformed URI
        return f"{redact(uri)} is not a valid database URL ({redact(error_line(e, limit=120))})"
    libpq = {o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults()}
    # Options for libpq in the query string (sslmode=...); SQLAlchemy's own are not its business.
    options = {k: v if isinstance(v, str) else v[-1] for k, v in url.query.items() if k in libpq}
    params = {"host": url.host, "port": url.port, "user": url.username, "password": url.password,
              "dbname": url.database, **options, "connect_timeout": timeout}
    where = f"{url.host or options.get('host') or 'localhost'}:{url.port or options.get('port') or 5432}"
    try:
        psycopg.connect(**{k: v for k, v in params.items() if v is not None}).close()
    except psycopg.Error as e:
        return redact(_describe(str(e), where, url.database, url.username, timeout))
    return None


def _describe(message: str, where: str, database: str | None, user: str | None, timeout: int) -> str:
    """One line for libpq's connection error `message`."""
    text = message.lower()
    if "does not exist" in text and "database" in text:
        return f"the PostgreSQL server at {where} has no database {database!r} (create it: createdb {database})"
    if "password authentication failed" in text or "no password supplied" in text or "authentication" in text:
        return f"the PostgreSQL server at {where} refused the credentials of user {user!r}"
    if "connection refused" in text:
        reason = "connection refused"
    elif "timeout" in text or "timed out" in text:
        reason = f"no answer in {timeout} s"
    elif "could not translate host name" in text or "name or service not known" in text:
        reason = "unknown host name"
    else:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        reason = (lines[0].rpartition(" failed: ")[2] if lines else "no connection")[:160]
    return f"cannot reach the PostgreSQL server at {where} ({reason})"
