"""`plasticity.redact`: the one helper that hides secrets in what is printed, logged or
stored. Passwords as people write them in URLs (unquoted `@`, `/`, `:`, `?`, `#`, or
URL-quoted `%40`) are hidden whole, and the user, host, port and database stay."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from plasticity.redact import MASK, redact

# (text, what redact makes of it)
CASES = {
    "psycopg": ("postgresql+psycopg://user:s3cret@db:5432/optuna", "postgresql+psycopg://user:***@db:5432/optuna"),
    "at": ("postgresql://user:p@ss@host:5432/db", "postgresql://user:***@host:5432/db"),
    "two-at": ("http://u:pa@ss:w0rd@h:1/x", "http://u:***@h:1/x"),
    "quoted-at": ("mysql+pymysql://u:a%40b@h/db", "mysql+pymysql://u:***@h/db"),
    "colon": ("http://u:p:w@h", "http://u:***@h"),
    "slash": ("http://u:p/w@h/x", "http://u:***@h/x"),
    "slash-colon": ("postgresql+psycopg://plasticity:a/b@c:d%40e@postgres:5432/optuna",
                    "postgresql+psycopg://plasticity:***@postgres:5432/optuna"),
    "hash": ("postgresql://user:p#ss@host/db", "postgresql://user:***@host/db"),
    "question": ("postgresql://user:p?ss@host/db?sslmode=require", "postgresql://user:***@host/db?sslmode=require"),
    "query": ("postgresql://user:p@ss@host:5432/db?sslmode=require", "postgresql://user:***@host:5432/db?sslmode=require"),
    "in-text": ("error at http://admin:pw@127.0.0.1:5000/api (refused)",
                "error at http://admin:***@127.0.0.1:5000/api (refused)"),
    "quoted-text": ("url='postgresql://u:p/@:%40@h:5/d' failed", "url='postgresql://u:***@h:5/d' failed"),
    "two-urls": ("x postgresql://a:b@c/d y http://e:f@g/ z", "x postgresql://a:***@c/d y http://e:***@g/ z"),
    "at-then-slash": ("postgresql://opt:p@ss/w0rd@db:5432/optuna", "postgresql://opt:***@db:5432/optuna"),
    # An '@' after the host is masked with the password (it could be part of one): the
    # price of never showing a password.
    "at-in-path": ("http://u:p@h/a@b", "http://u:***@b"),
    "at-after-space": ("http://u:p@h/a and a@b", "http://u:***@h/a and a@b"),
    "token-only": ("http://:tok@host/x?password=abc&db=1", "http://:***@host/x?password=***&db=1"),
    "libpq": ("host=db user=u password=hunter2 dbname=x", "host=db user=u password=*** dbname=x"),
    "libpq-odd": ("host=db password=p@ss/w:rd%40 dbname=x", "host=db password=*** dbname=x"),
    "env": ("MLFLOW_TRACKING_PASSWORD=xyz", "MLFLOW_TRACKING_PASSWORD=***"),
    # Nothing secret: unchanged.
    "no-password": ("postgresql://postgres@127.0.0.1:5432/x", "postgresql://postgres@127.0.0.1:5432/x"),
    "port": ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    "fragment": ("http://host:5000/#/experiments/1", "http://host:5000/#/experiments/1"),
    "sqlite": ("sqlite:////tmp/mlruns.db", "sqlite:////tmp/mlruns.db"),
    "ray": ("ray://host:10001", "ray://host:10001"),
    "prose": ("RAY_AUTH_TOKEN is not set: put it in .env", "RAY_AUTH_TOKEN is not set: put it in .env"),
}


@pytest.mark.parametrize("text, expected", CASES.values(), ids=CASES.keys())
def test_redact(text, expected):
    assert redact(text) == expected


URLS = {
    "postgresql": "postgresql+psycopg://plasticity:{}@postgres:5432/optuna",
    "mysql": "mysql+pymysql://u:{}@h/db",
    "mlflow": "http://admin:{}@mlflow.example:5000/api/2.0?x=1",
    "query": "postgresql://user:{}@127.0.0.1/db?sslmode=require&application_name=a",
}
PASSWORDS = ["p@ss", "a/b", "p:w", "a%40b", "p@ss/w0rd:x", "@/:@", "a?b#c", "%2F%3A%40"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("kind", URLS)
def test_a_password_is_hidden_whole_and_the_rest_of_the_url_kept(kind, password):
    """Any password (with '@', '/', ':', '?', '#', or URL-quoted) in any URL: replaced by
    the mask as a whole, everything else exactly as it was; the quoted form too."""
    for secret in (password, quote(password, safe="")):
        assert redact(URLS[kind].format(secret)) == URLS[kind].format(MASK)


def test_the_sweep_summary_hides_passwords_with_the_same_helper():
    """`plasticity sweep show` prints the Optuna storage and the MLflow link: the storage's
    password (here with '@' and '/') is hidden whole, and so is the tracking server's."""
    from tune.summary import SweepView, render

    view = SweepView(name="s", task="patterns", metric="eval/loss", rows=[],
                     storage="postgresql://opt:p@ss/w0rd@db:5432/optuna",
                     tracking_uri="http://admin:t@ken@mlflow:5000", experiment_id="1", parent_run_id="abc")
    text = render(view)
    assert "Optuna: postgresql://opt:***@db:5432/optuna (study s)" in text
    assert "http://admin:***@mlflow:5000/#/experiments/1" in text
    assert "ss/w0rd" not in text and "ken@" not in text
