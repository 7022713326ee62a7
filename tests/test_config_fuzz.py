"""Property: every input to the experiment loader yields an Experiment or a ConfigError.

Hypothesis writes TOML documents (random tables, keys and values: deep nesting,
odd unicode, huge integers, NaN/inf, dates), mutates the shipped experiment files
(drops, alters, retypes and swaps keys) and throws raw bytes at `load`. No other
exception may escape, each example must finish within the deadline, and what is
accepted must survive what `kdtui submit` does with it (expand, save, reload,
integers SQLite can hold).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core import planning, reading, registry, schema, writing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "experiments").rglob("*.toml"))
RAW = {p.relative_to(ROOT).as_posix(): tomllib.loads(p.read_text()) for p in SHIPPED}
FUZZ = settings(
    # a few hundred examples in CI; KDTUI_FUZZ_EXAMPLES=5000 for a longer hunt
    max_examples=int(os.environ.get("KDTUI_FUZZ_EXAMPLES", "120")),
    deadline=timedelta(seconds=5),  # per example, generous for a loaded 2-core box
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KNOWN_KEYS = sorted(
    {f"{sec}.{f}" for sec, cls in schema.SECTIONS.items() for f in schema.field_meta(cls)}
    | {f"distill.{k}" for s in registry.METHODS.values() for k in s.options}
)
HUGE = [2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, 2**1000, -(10**400)]
odd_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # TOML cannot hold lone surrogates
    max_size=40,
) | st.sampled_from(
    ["", "[/]", "[bold red]x[/]", "\x1b[31m", "x\n", "\u202eevil", "a" * 5000, "../../etc", "名前"]
)
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    odd_text,
    st.sampled_from(list(registry.METHODS) + list(registry.ARCHS)[:5] + ["digits", "synthetic"]),
    st.dates(),
    st.datetimes(),
    st.times(),
)
keys = st.sampled_from(KNOWN_KEYS).map(lambda k: k.split(".")[-1]) | odd_text.filter(bool)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def section_table(section: str):
    names = [k.split(".", 1)[1] for k in KNOWN_KEYS if k.startswith(section + ".")]
    return st.dictionaries(st.sampled_from(names) | keys, values, max_size=6)


documents = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["fuzz", "a/b-1.0+x"]) | odd_text | values,
        "description": odd_text,
        "seeds": st.lists(st.integers(min_value=-5, max_value=2**33), max_size=4) | values,
        **{sec: section_table(sec) | values for sec in schema.SECTIONS},
        "sweep": st.dictionaries(
            st.sampled_from(KNOWN_KEYS) | keys, st.lists(scalars, max_size=4) | values, max_size=3
        )
        | values,
    },
).flatmap(lambda doc: st.dictionaries(keys, values, max_size=2).map(lambda extra: {**extra, **doc}))


def accepted_survives_submit(exp: schema.Experiment) -> None:
    """What the store does with an accepted experiment must not fail either."""
    plans = planning.expand(exp)
    assert plans and len(plans) <= schema.RUNS_MAX + 1
    again = reading.loads(writing.dumps(exp))  # saved and reloaded: still valid
    assert again.name == exp.name
    for plan in plans[:5]:
        # as the store stores it and the worker reads it back: a resolved config
        one = reading.loads(writing.resolved_toml(plan.config), resolved=True)
        stack: list = [writing.to_dict(one)]
        while stack:  # every number fits SQLite and is finite
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, float):
                assert math.isfinite(v)
            elif isinstance(v, int) and not isinstance(v, bool):
                assert abs(v) < 2**63


def check(text: str) -> None:
    try:
        exp = reading.loads(text, file="fuzz.toml")
    except schema.ConfigError as e:
        assert str(e).startswith("fuzz.toml") and e.errors
        return
    accepted_survives_submit(exp)


def dump(doc: dict) -> str | None:
    try:
        return tomli_w.dumps(doc)
    except (TypeError, ValueError, RecursionError):  # not expressible in TOML: not an input
        return None


@FUZZ
@given(documents)
def test_any_toml_document_is_an_experiment_or_a_config_error(doc):
    text = dump(doc)
    if text is not None:
        check(text)


def paths(node, prefix=()):
    for key, value in node.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from paths(value, (*prefix, key))


def get_parent(doc, path):
    for key in path[:-1]:
        doc = doc[key]
    return doc


@FUZZ
@given(st.sampled_from(sorted(RAW)), st.data())
def test_mutations_of_the_shipped_experiments_are_experiments_or_config_errors(name, data):
    doc = tomllib.loads(tomli_w.dumps(RAW[name]))  # a fresh copy
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        where = sorted(paths(doc))
        if not where:
            break
        path = data.draw(st.sampled_from(where), label="key")
        parent = get_parent(doc, path)
        op = data.draw(st.sampled_from(["drop", "alter", "retype", "swap", "add"]), label="op")
        if op == "drop":
            del parent[path[-1]]
        elif op == "alter":
            parent[path[-1]] = data.draw(values, label="value")
        elif op == "retype":
            old = parent[path[-1]]
            parent[path[-1]] = (
                [old] if not isinstance(old, list) else str(old) if old else {"x": old}
            )
        elif op == "swap":
            other = data.draw(st.sampled_from(where), label="other")
            other_parent = get_parent(doc, other)
            if other[-1] in other_parent and path[-1] in parent:
                parent[path[-1]], other_parent[other[-1]] = (
                    other_parent[other[-1]],
                    parent[path[-1]],
                )
        else:
            target = parent if isinstance(parent, dict) else doc
            target[data.draw(keys, label="new key")] = data.draw(values, label="value")
    text = dump(doc)
    if text is not None:
        check(text)


BASE_TEXT = (ROOT / "experiments" / "quickstart.toml").read_text()
raw_texts = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.tuples(st.integers(0, len(BASE_TEXT)), st.binary(min_size=1, max_size=40)).map(
        lambda p: BASE_TEXT.encode()[: p[0]] + p[1] + BASE_TEXT.encode()[p[0] :]
    ),
    st.tuples(st.sampled_from("[{"), st.integers(1, 6000)).map(
        lambda p: (f"{BASE_TEXT}\nx = " + (p[0] if p[0] == "[" else "{a = ") * p[1]).encode()
    ),
    st.integers(1, 9000).map(lambda n: (BASE_TEXT + f"\n[run]\npriority = {'9' * n}\n").encode()),
    st.integers(1, 9000).map(lambda n: BASE_TEXT.replace("quickstart", "q" * n).encode()),
)


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="kdtui-fuzz-") as d:
        yield Path(d)


@FUZZ
@given(raw=raw_texts)
def test_any_bytes_on_disk_load_as_an_experiment_or_a_config_error(raw, folder):
    path = folder / "fuzz.toml"
    path.write_bytes(raw)
    try:
        exp = reading.load(path)
    except schema.ConfigError as e:
        assert str(e).startswith(str(path)) and e.errors
        return
    accepted_survives_submit(exp)


def test_the_strategies_reach_dates_and_the_shipped_files():
    assert len(RAW) >= 40  # every experiment in experiments/
    assert dump({"d": dt.date(2020, 1, 1)}) is not None
