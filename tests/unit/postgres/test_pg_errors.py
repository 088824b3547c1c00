import psycopg2
import pytest

from electric.postgres import errors
from electric.vaxine.etf import Atom
from electric.vaxine.offset import describe_start


@pytest.mark.parametrize("text, words", [
    ("no COPY in progress\n", "connection closed"),
    ("server closed the connection unexpectedly\n\tThis probably means", "connection closed"),
    ("SSL SYSCALL error: EOF detected", "connection closed"),
    ('connection to server at "127.0.0.1", port 5 failed: Connection refused\n\tIs the server',
     "connection refused"),
    ("FATAL:  terminating connection due to administrator command",
     "server shut down or an administrator ended the connection"),
    ('FATAL:  password authentication failed for user "electric"',
     'password authentication failed for user "electric"'),
])
def test_reason_in_operator_words(text, words):
    assert errors.reason(psycopg2.OperationalError(text)) == words


def test_offsets_in_operator_words():
    assert describe_start(0) == "from the start of the log"
    assert describe_start(Atom("eof")) == "from the end of the log (new transactions only)"
    assert describe_start((74, 80)) == "after log offset 74/80"
