from __future__ import annotations

from pathlib import Path

import pytest

from driftloop.core.errors import SpecError, SpecNotFoundError
from driftloop.core.spec import load_spec, parse_spec, read_yaml

from .helpers import write_spec

BASE = """
name: shop
task: classification
target: y
sources:
  - name: orders
    path: data/raw/orders/*.csv
contract:
  columns:
    y: {dtype: str, allowed: ["a", "b"]}
    x: {dtype: float, min: 0}
    t: {dtype: datetime}
"""


def test_valid_spec_loads_frozen(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, BASE).parent)
    assert spec.target == "y"
    assert spec.primary.csv.separator == ","
    with pytest.raises(Exception, match="frozen"):
        spec.target = "x"  # type: ignore[misc]


def test_unknown_key_names_file_path_and_suggestion(tmp_path: Path) -> None:
    write_spec(tmp_path, BASE.replace("target: y", "targte: y"))
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    text = str(info.value)
    assert "driftloop.yaml" in text
    assert "unknown key 'targte'" in text
    assert "did you mean 'target'" in text


def test_nested_unknown_key_has_key_path(tmp_path: Path) -> None:
    bad = BASE.replace("path: data/raw/orders/*.csv", "path: x\n    csv: {separatr: ';'}")
    write_spec(tmp_path, bad)
    with pytest.raises(SpecError, match=r"in sources\[0\]\.csv; did you mean 'separator'"):
        load_spec(tmp_path)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    bad = BASE.replace("task: classification", "task: clustering").replace(
        "x: {dtype: float, min: 0}", "x: {dtype: float, min: 5, max: 1}"
    )
    write_spec(tmp_path, bad)
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    lines = str(info.value).splitlines()
    assert any("task" in line and "clustering" in line for line in lines)
    assert any("contract.columns.x" in line and "greater than max" in line for line in lines)


def test_target_must_be_in_contract_with_hint() -> None:
    data = read_yaml(BASE.replace("target: y", "target: xx"))
    with pytest.raises(SpecError, match=r"target names column 'xx'.*did you mean 'x'"):
        parse_spec(data)


def test_secondary_source_needs_join() -> None:
    data = read_yaml(BASE)
    data["sources"].append({"name": "customers", "path": "data/raw/customers/*.csv"})
    with pytest.raises(SpecError, match=r"sources\[1\] \(customers\) needs 'join"):
        parse_spec(data)


def test_missing_spec_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(SpecNotFoundError, match="driftloop init --from FILE --target COLUMN"):
        load_spec(tmp_path)


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    write_spec(tmp_path, BASE + "\n  bad: [unclosed\n")
    with pytest.raises(SpecError, match=r"line \d+, column \d+: not valid YAML"):
        load_spec(tmp_path)


BILLION_LAUGHS = """model:
  params:
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    """A billion laughs (a 1 KB spec whose aliases expand to 10**9 values) is a SpecError
    naming the file and the limit, found before anything walks the expanded values."""
    path = write_spec(tmp_path, BASE + BILLION_LAUGHS)
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{path}: line 19: YAML aliases (*name) expand this value to ")
    assert "more than the 100,000 allowed; aliases are limited" in text
    # A merge-key bomb (<<: [*a, ...]) is counted the same way.
    merges = "x0: &x0 {k: v}\n" + "".join(
        f"x{i}: &x{i} {{<<: [{', '.join([f'*x{i - 1}'] * 10)}]}}\n" for i in range(1, 9)
    )
    with pytest.raises(SpecError, match="aliases are limited"):
        read_yaml(merges)
    with pytest.raises(SpecError, match="refers to the value that holds it"):
        read_yaml("a: &a [1, *a]\n")
    # Aliases within the bound keep working.
    shared = BASE.replace("x: {dtype: float, min: 0}", "x: &num {dtype: float, min: 0}")
    spec = parse_spec(read_yaml(shared + "    z: *num\n"))
    assert spec.contract.columns["z"] == spec.contract.columns["x"]


def test_section_hash_changes_only_with_section() -> None:
    a = parse_spec(read_yaml(BASE))
    data = read_yaml(BASE)
    data["features"] = {"logs": ["x"]}
    b = parse_spec(data)
    assert a.section_hash("contract") == b.section_hash("contract")
    assert a.section_hash("features") != b.section_hash("features")


def test_bad_regex_and_encoding_rejected() -> None:
    data = read_yaml(BASE)
    data["contract"]["columns"]["y"]["regex"] = "([a"
    data["sources"][0]["csv"] = {"encoding": "klingon"}
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert "regex '([a' is not supported: unclosed" in str(info.value)
    assert "unknown encoding 'klingon'" in str(info.value)


def test_yaml_12_booleans_keep_on_and_yes_as_strings() -> None:
    data = read_yaml("join: {on: [id]}\nallowed: [Yes, No, on, off]\nflag: true\n")
    assert data == {"join": {"on": ["id"]}, "allowed": ["Yes", "No", "on", "off"], "flag": True}


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ({"dtype": "str", "regex": "^(?!zz).*$"}, "look-around"),
        ({"dtype": "date", "allowed": ["x"]}, "allowed applies to str, int and float columns"),
        ({"dtype": "int", "allowed": ["a"]}, "allowed value 'a' is not an int"),
        ({"dtype": "date", "format": "%Y-%Q"}, "'Q' is a bad directive"),
        ({"dtype": "int", "format": "%Y"}, "format applies to date and datetime"),
    ],
)
def test_contract_mistakes_fail_at_load_with_the_key(
    column: dict[str, object], message: str
) -> None:
    data = read_yaml(BASE)
    data["contract"]["columns"]["x"] = column
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert "contract.columns.x" in str(info.value)
    assert message in str(info.value)
