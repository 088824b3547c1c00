from electric import errors
from electric.vaxine.rows import RowMappingError


class Refused(errors.Permanent):
    pass


class Away(errors.Transient, ValueError):
    pass


def test_permanent_and_transient():
    assert errors.is_permanent(Refused("row 1 of t cannot be mapped"))
    assert not errors.is_permanent(errors.Transient("Vaxine away"))
    assert not errors.is_permanent(Away("says transient though a ValueError"))
    assert errors.is_permanent(ValueError("invalid literal"))  # bad data from code not ours
    assert errors.is_permanent(RowMappingError("too large"))
    assert not errors.is_permanent(OSError("connection refused"))
    assert not errors.is_permanent(RuntimeError("store busy"))


def test_describe_is_one_line():
    assert errors.describe(OSError("refused\nmore detail")) == "OSError: refused"
    assert errors.describe(RuntimeError()) == "RuntimeError"
    assert Refused("table t: column c too large").line == "Refused: table t: column c too large"
