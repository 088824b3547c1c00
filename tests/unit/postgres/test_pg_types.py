from electric.postgres import types


def test_builtin_names_and_arrays():
    assert types.name_for_oid(2950) == "uuid"
    assert types.name_for_oid(1007) == "_int4"
    assert types.name_for_oid(99999) is None
    assert types.oid_for_name("_text") == 1009
    assert types.oid_for_name("jsonb") == 3802
    assert types.oid_for_name("mood") is None


def test_user_types_replicate_as_text():
    assert types.replicated_type(1043, "varchar", 68) == ("varchar", 1043, 68)
    assert types.replicated_type(16500, "mood", -1) == ("text", 25, -1)
    assert types.replicated_type(16501, "_mood", -1) == ("text", 25, -1)
    assert types.replicated_type(16502, "citext", 5) == ("text", 25, -1)
