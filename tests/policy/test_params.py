"""The param policy: flatten → render → sanitize keys → long values → batches."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers import run_python, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

import trackcfg._params
from trackcfg._batching import plan_batches
from trackcfg._config import DictParamsConfig, LongParamsStrategy, ParamsConfig
from trackcfg._params import (
    DEFAULT_LIMITS,
    Batch,
    Limits,
    MetricPoint,
    flatten,
    prepare_params,
    prepare_tags,
    render_value,
    sanitize_key,
)
from trackcfg.exceptions import ConfigError, ParamValueTooLongError

LOGGER = "trackcfg._params"


def mlflow_accepts(key: str) -> bool:
    """MLflow's own key check (mlflow.utils.validation), length aside."""
    return bool(validate_param_and_metric_name(key)) and not path_not_unique(key)  # type: ignore[no-untyped-call]


def config(
    strategy: LongParamsStrategy = LongParamsStrategy.FAIL,
    *,
    flat: bool = False,
    recursive: bool = True,
    sep: str = ".",
) -> ParamsConfig:
    return ParamsConfig(
        dict_params=DictParamsConfig(flatten=flat, recursive=recursive, sep=sep),
        long_params_strategy=strategy,
    )


# --- flatten ---------------------------------------------------------------------------------


def test_flatten_recursive_joins_every_level_with_sep() -> None:
    nested = {"model": {"lr": 0.1, "opt": {"name": "adam", "beta": 0.9}}, "seed": 1}
    assert flatten(nested, recursive=True, sep=".") == {
        "model.lr": 0.1,
        "model.opt.name": "adam",
        "model.opt.beta": 0.9,
        "seed": 1,
    }


def test_flatten_not_recursive_keeps_depth_two_mappings_as_values() -> None:
    nested = {"model": {"lr": 0.1, "opt": {"name": "adam"}}}
    assert flatten(nested, recursive=False, sep="/") == {
        "model/lr": 0.1,
        "model/opt": {"name": "adam"},
    }


def test_flatten_stringifies_non_string_keys_and_keeps_order() -> None:
    result = flatten({"z": 1, 2: {3: "x", None: "y"}, "a": 0}, recursive=True, sep="_")
    assert list(result.items()) == [("z", 1), ("2_3", "x"), ("2_None", "y"), ("a", 0)]


def test_flatten_keeps_an_empty_mapping_as_a_value() -> None:
    assert flatten({"a": {}, "b": {"c": {}}}, recursive=True, sep=".") == {"a": {}, "b.c": {}}


def test_flatten_collision_with_different_values_names_both_paths() -> None:
    with pytest.raises(ConfigError) as info:
        flatten({"a.b": 1, "a": {"b": 2}}, recursive=True, sep=".")
    assert str(info.value) == (
        "invalid trackcfg configuration: 'a.b': params ['a.b'] and ['a']['b'] both become the "
        "param key 'a.b' with different values; rename one of them or change "
        "tracking.params.dict_params.sep"
    )


def test_flatten_same_key_with_equal_rendered_value_is_kept_once() -> None:
    assert flatten({"a.b": 1, "a": {"b": "1"}}, recursive=True, sep=".") == {"a.b": 1}


# --- render ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "1"),
        (1.0, "1.0"),
        (None, "None"),
        (True, "True"),
        ([1, "a"], "[1, 'a']"),
        ({"k": 1}, "{'k': 1}"),
        ("  spaced  ", "  spaced  "),
    ],
)
def test_render_value_is_exactly_str(value: object, expected: str) -> None:
    assert render_value(value) == expected


def test_unflattened_dict_param_is_rendered_with_str() -> None:
    prepared = prepare_params({"opt": {"name": "adam", "lr": 0.1}}, config())
    assert prepared.params == {"opt": "{'name': 'adam', 'lr': 0.1}"}


def test_flattened_params_are_rendered_with_str() -> None:
    prepared = prepare_params({"opt": {"lr": 0.1, "n": None}}, config(flat=True))
    assert prepared.params == {"opt.lr": "0.1", "opt.n": "None"}


def test_flatten_one_level_renders_deeper_mapping_with_str() -> None:
    prepared = prepare_params({"a": {"b": {"c": 1}}}, config(flat=True, recursive=False))
    assert prepared.params == {"a.b": "{'c': 1}"}


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("", "_"),
        (".", "_"),
        ("/", "_"),
        ("/a", "a"),
        ("a//b", "a/b"),
        ("a/", "a"),
        ("./a", "a"),
        ("a/./b", "a/b"),
        ("..", "__"),
        ("../a", "__/a"),
        ("a/../b", "a/__/b"),
        ("..a", "__a"),
        ("a b?", "a b_"),
        ("x=1,y=2", "x_1_y_2"),
        ("tab\there", "tab_here"),
        ("trailing\n", "trailing_"),
        ("back\\slash", "back_slash"),
    ],
)
def test_sanitize_key_repairs_invalid_keys(key: str, expected: str) -> None:
    assert sanitize_key(key) == expected
    assert mlflow_accepts(expected)


@pytest.mark.parametrize(
    "key", ["lr", "model.lr", "a/b/c", "with space", "dash-ed", "été", ".a", "a..b", "a/...b", "_"]
)
def test_sanitize_key_keeps_valid_keys_unchanged(key: str) -> None:
    assert mlflow_accepts(key)
    assert sanitize_key(key) == key


@pytest.mark.skipif(os.name == "nt", reason="MLflow refuses ':' on Windows")
def test_sanitize_key_keeps_colon_off_windows() -> None:
    assert sanitize_key("stage:train") == "stage:train"


def test_sanitized_key_is_logged_as_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prepared = prepare_params({"a b?": 1, "ok": 2}, config())
    assert prepared.params == {"a b_": "1", "ok": "2"}
    assert caplog.messages == ["param key 'a b?' is not accepted by MLflow; logged as 'a b_'"]
    assert prepared.warnings == tuple(caplog.messages)


def test_valid_keys_log_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        prepared = prepare_params({"a": 1, "b/c": 2}, config())
    assert caplog.records == []
    assert prepared.warnings == ()


def test_key_at_the_limit_is_accepted() -> None:
    key = "k" * DEFAULT_LIMITS.key
    assert prepare_params({key: 1}, config()).params == {key: "1"}


def test_key_over_the_limit_is_an_error_not_a_cut() -> None:
    key = "k" * 251
    with pytest.raises(ConfigError) as info:
        prepare_params({key: 1}, config())
    assert [(p.key, p.message) for p in info.value.problems] == [
        (key, "param key is 251 characters long; MLflow accepts at most 250. Use a shorter key")
    ]
    assert isinstance(info.value, ValueError)


def test_flattened_key_over_the_limit_points_at_dict_params() -> None:
    with pytest.raises(ConfigError) as info:
        prepare_params({"a" * 200: {"b" * 60: 1}}, config(flat=True))
    (problem,) = info.value.problems
    assert problem.key == "a" * 200 + "." + "b" * 60
    assert problem.message.endswith(
        "Use a shorter key or change tracking.params.dict_params (flatten, recursive, sep)"
    )


def test_collision_after_sanitizing_names_both_original_keys() -> None:
    with pytest.raises(ConfigError) as info:
        prepare_params({"a b?": 1, "a b!": 2}, config())
    assert str(info.value) == (
        "invalid trackcfg configuration: 'a b_': params ['a b?'] and ['a b!'] both become the "
        "param key 'a b_' with different values; rename one of them"
    )


def test_collision_after_flattening_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"\['a\.b'\] and \['a'\]\['b'\]"):
        prepare_params({"a.b": 1, "a": {"b": 2}}, config(flat=True))


def test_every_key_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        prepare_params({"x?": 1, "x!": 2, "k" * 300: 3}, config())
    assert [p.key for p in info.value.problems] == ["k" * 300, "x_"]


def test_same_final_key_with_equal_rendered_value_is_kept_once() -> None:
    prepared = prepare_params({"a b?": 1, "a b!": "1", "c": 2}, config())
    assert prepared.params == {"a b_": "1", "c": "2"}


# --- long values -----------------------------------------------------------------------------


def test_value_at_the_limit_is_kept_under_every_strategy() -> None:
    value = "v" * 6000
    for strategy in LongParamsStrategy:
        prepared = prepare_params({"p": value}, config(strategy))
        assert prepared.params == {"p": value}
        assert prepared.tags == {}


def test_fail_raises_naming_key_length_limit_and_setting() -> None:
    with pytest.raises(ParamValueTooLongError) as info:
        prepare_params({"short": 1, "long": "x" * 6001}, config(LongParamsStrategy.FAIL))
    assert (info.value.key, info.value.length, info.value.limit) == ("long", 6001, 6000)
    assert str(info.value) == (
        "param 'long' is 6001 characters long; MLflow accepts at most 6000. Set "
        "tracking.params.long_params_strategy to 'truncate' (keep the first 6000 characters) "
        "or 'tag' (log the full value as a tag) to log it anyway."
    )
    assert isinstance(info.value, ValueError)


def test_fail_uses_the_given_limit_and_the_sanitized_key() -> None:
    with pytest.raises(ParamValueTooLongError, match=r"^param 'a_' is 4 characters long; .* 3\."):
        prepare_params({"a?": "abcd"}, config(), Limits(param_value=3))


def test_truncate_keeps_the_first_characters_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    value = "".join(str(i % 10) for i in range(6500))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prepared = prepare_params({"long": value, "s": 1}, config(LongParamsStrategy.TRUNCATE))
    assert prepared.params == {"long": value[:6000], "s": "1"}
    assert caplog.messages == [
        "param 'long' is 6500 characters long; logged its first 6000 characters "
        "(tracking.params.long_params_strategy: truncate)"
    ]
    assert prepared.tags == {}
    assert prepared.artifacts == {}


def test_tag_moves_the_full_value_to_a_tag_of_the_same_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    value = "t" * 7000
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prepared = prepare_params({"long": value, "s": 1}, config(LongParamsStrategy.TAG))
    assert prepared.params == {"s": "1"}
    assert prepared.tags == {"long": value}
    assert prepared.artifacts == {}
    assert caplog.messages == []


def test_tag_past_the_tag_limit_shortens_the_tag_visibly_and_logs_an_artifact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    value = "".join(chr(97 + i % 26) for i in range(9000))
    note = "\u2026 (9000 characters; full text in artifact params/a/b.txt)"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prepared = prepare_params({"a/b": value}, config(LongParamsStrategy.TAG))
    assert prepared.params == {}
    assert prepared.tags == {"a/b": value[: 8000 - len(note)] + note}
    assert len(prepared.tags["a/b"]) == 8000
    assert prepared.artifacts == {"params/a/b.txt": value}
    assert caplog.messages == [
        "param 'a/b' is 9000 characters long, past the tag limit 8000 too; the tag holds its "
        "beginning and says so, the full value is logged as artifact 'params/a/b.txt' "
        "(tracking.params.long_params_strategy: tag)"
    ]
    assert prepared.warnings == tuple(caplog.messages)


# --- tags ------------------------------------------------------------------------------------


def test_prepare_tags_sanitizes_keys_and_stringifies_values() -> None:
    assert prepare_tags({"team?": "ml", "n": 3, "none": None}) == {
        "team_": "ml",
        "n": "3",
        "none": "None",
    }


def test_prepare_tags_does_not_flatten() -> None:
    assert prepare_tags({"d": {"a": 1}}) == {"d": "{'a': 1}"}


def test_prepare_tags_value_over_the_limit_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        prepare_tags({"note": "n" * 8001, "ok": "y"})
    assert str(info.value) == (
        "invalid trackcfg configuration: 'note': tag value is 8001 characters long; MLflow "
        "accepts at most 8000. Shorten it or log it as an artifact"
    )


def test_prepare_tags_collision_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"tags \['a\?'\] and \['a!'\] both become the tag key"):
        prepare_tags({"a?": 1, "a!": 2})


def test_prepare_tags_key_over_the_limit_is_an_error() -> None:
    with pytest.raises(ConfigError, match="tag key is 251 characters long"):
        prepare_tags({"k" * 251: 1})


# --- batches ---------------------------------------------------------------------------------


def metric(i: int, key: str = "m") -> MetricPoint:
    return MetricPoint(key=key, value=float(i), step=i, timestamp=1_700_000_000_000 + i)


def test_nothing_to_send_plans_no_batch() -> None:
    assert plan_batches() == []
    assert plan_batches(params={}, tags={}, metrics=[]) == []


def test_250_params_take_three_batches_in_order() -> None:
    params = {f"p{i}": str(i) for i in range(250)}
    batches = plan_batches(params=params)
    assert [len(b.params) for b in batches] == [100, 100, 50]
    assert [kv for b in batches for kv in b.params] == list(params.items())


def test_params_and_tags_share_batches() -> None:
    params = {f"p{i}": "v" for i in range(150)}
    tags = {f"t{i}": "v" for i in range(120)}
    batches = plan_batches(params=params, tags=tags)
    assert [(len(b.params), len(b.tags)) for b in batches] == [(100, 100), (50, 20)]


def test_metrics_fill_the_room_params_leave() -> None:
    params = {f"p{i}": "v" for i in range(100)}
    metrics = [metric(i) for i in range(1000)]
    batches = plan_batches(params=params, metrics=metrics)
    assert [(len(b.params), len(b.metrics)) for b in batches] == [(100, 900), (0, 100)]


def test_metrics_alone_split_by_metrics_per_batch() -> None:
    batches = plan_batches(metrics=[metric(i) for i in range(2500)])
    assert [len(b.metrics) for b in batches] == [1000, 1000, 500]


def test_request_bytes_split_batches() -> None:
    limits = Limits(request_bytes=10)
    batches = plan_batches(params={"a": "1234", "b": "1234", "c": "1234"}, limits=limits)
    assert batches == [
        Batch(params=(("a", "1234"), ("b", "1234"))),
        Batch(params=(("c", "1234"),)),
    ]


def test_item_over_the_byte_budget_goes_alone() -> None:
    limits = Limits(request_bytes=10)
    batches = plan_batches(params={"a": "1", "big": "x" * 50, "c": "1"}, limits=limits)
    assert batches == [
        Batch(params=(("a", "1"),)),
        Batch(params=(("big", "x" * 50),)),
        Batch(params=(("c", "1"),)),
    ]


def test_metric_cost_counts_key_plus_overhead() -> None:
    limits = Limits(request_bytes=83)
    batches = plan_batches(
        metrics=[metric(0, "ab"), metric(1, "ab"), metric(2, "ab")], limits=limits
    )
    assert [len(b.metrics) for b in batches] == [1, 1, 1]
    batches = plan_batches(
        metrics=[metric(0, "a"), metric(1, "a")], limits=Limits(request_bytes=82)
    )
    assert [len(b.metrics) for b in batches] == [2]


@pytest.mark.parametrize(
    "field",
    [f.name for f in attrs.fields(Limits)],
)
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=f"'{field}' must be >= 1: 0"):
        Limits(**{field: 0})


def test_params_module_does_not_import_mlflow() -> None:
    code = "import sys, trackcfg._params; print('mlflow' in sys.modules)"
    # The package's own folder, whatever the current one is and however trackcfg was installed.
    root = Path(trackcfg._params.__file__).parents[1]
    done = run_python("-c", code, cwd=root, env=subprocess_env(PYTHONPATH=str(root)))
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


# --- properties ------------------------------------------------------------------------------

key_text = st.text(alphabet=st.sampled_from("ab./ :?!-_é\n\\\t="), max_size=8)
any_key = st.one_of(key_text, st.integers(-3, 3), st.none())


# Values: any text but NUL, which the policy refuses at the call (its own test says so).
def value_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=max_size)


leaf = st.one_of(st.integers(), value_text(5), st.none(), st.floats(allow_nan=False))
nested_params = st.dictionaries(
    any_key,
    st.recursive(leaf, lambda inner: st.dictionaries(any_key, inner, max_size=3), max_leaves=6),
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=20))
def test_property_sanitize_key_is_accepted_by_mlflow(key: str) -> None:
    sanitized = sanitize_key(key)
    assert sanitized
    assert mlflow_accepts(sanitized)
    assert len(sanitized) <= max(len(key), 1)
    assert sanitize_key(sanitized) == sanitized


@settings(max_examples=150, deadline=None)
@given(key_text)
def test_property_sanitize_key_keeps_keys_mlflow_accepts(key: str) -> None:
    # MLflow's "$" lets one trailing newline through; trackcfg refuses it on purpose.
    if mlflow_accepts(key) and not key.endswith("\n"):
        assert sanitize_key(key) == key
    else:
        assert sanitize_key(key) != key


@settings(max_examples=75, deadline=None)
@given(nested_params, st.booleans(), st.sampled_from([".", "/", "__", "|"]))
def test_property_flattened_keys_are_unique_and_valid_after_sanitizing(
    params: Mapping[Any, Any], recursive: bool, sep: str
) -> None:
    try:
        flat = flatten(params, recursive=recursive, sep=sep)
    except ConfigError as exc:
        problems = exc.problems
    else:
        problems = ()
        assert len(set(flat)) == len(flat)
    assert all("both become" in p.message for p in problems)
    if problems:
        return
    try:
        prepared = prepare_params(params, config(flat=True, recursive=recursive, sep=sep))
    except ConfigError as exc:
        problems = exc.problems
    assert all("both become" in p.message for p in problems)
    if problems:
        return
    keys = list(prepared.params)
    assert len(set(keys)) == len(keys)
    assert all(mlflow_accepts(k) for k in keys)
    assert len(keys) <= len(flat)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=4), value_text(30)),
    st.integers(1, 20),
)
def test_property_truncation_never_exceeds_the_limit(params: dict[str, str], limit: int) -> None:
    prepared = prepare_params(
        params, config(LongParamsStrategy.TRUNCATE), Limits(param_value=limit)
    )
    assert prepared.params.keys() == params.keys()
    for key, value in prepared.params.items():
        assert len(value) <= limit
        assert params[key].startswith(value)
        assert value == params[key][:limit]


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=4), value_text(30)),
    st.integers(1, 10),
    st.integers(1, 20),
)
def test_property_tag_strategy_loses_nothing(
    params: dict[str, str], param_limit: int, tag_limit: int
) -> None:
    limits = Limits(param_value=param_limit, tag_value=tag_limit)
    prepared = prepare_params(params, config(LongParamsStrategy.TAG), limits)
    assert prepared.params.keys() | prepared.tags.keys() == params.keys()
    assert not prepared.params.keys() & prepared.tags.keys()
    for key, value in params.items():
        if key in prepared.params:
            assert prepared.params[key] == value
            assert len(value) <= param_limit
        else:
            assert len(prepared.tags[key]) <= tag_limit
            assert prepared.artifacts.get(f"params/{key}.txt", prepared.tags[key]) == value


limits_strategy = st.builds(
    Limits,
    params_per_batch=st.integers(1, 6),
    tags_per_batch=st.integers(1, 6),
    metrics_per_batch=st.integers(1, 10),
    entities_per_batch=st.integers(1, 12),
    request_bytes=st.integers(1, 120),
)
short = st.text(alphabet="abcxyz", min_size=1, max_size=6)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(short, value_text(30), max_size=20),
    st.dictionaries(short, value_text(30), max_size=20),
    st.lists(st.builds(metric, st.integers(0, 1000), short), max_size=30),
    limits_strategy,
)
def test_property_batches_respect_limits_and_lose_nothing(
    params: dict[str, str], tags: dict[str, str], metrics: list[MetricPoint], limits: Limits
) -> None:
    batches = plan_batches(params=params, tags=tags, metrics=metrics, limits=limits)
    for b in batches:
        assert b.params or b.tags or b.metrics
        assert len(b.params) <= limits.params_per_batch
        assert len(b.tags) <= limits.tags_per_batch
        assert len(b.metrics) <= limits.metrics_per_batch
        count = len(b.params) + len(b.tags) + len(b.metrics)
        assert count <= limits.entities_per_batch
        size = sum(len(k) + len(v) for k, v in (*b.params, *b.tags))
        size += sum(len(m.key) + 40 for m in b.metrics)
        assert size <= limits.request_bytes or count == 1
        assert len({k for k, _ in b.params}) == len(b.params)
        assert len({k for k, _ in b.tags}) == len(b.tags)
    assert [kv for b in batches for kv in b.params] == list(params.items())
    assert [kv for b in batches for kv in b.tags] == list(tags.items())
    assert [m for b in batches for m in b.metrics] == metrics


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 1200))
def test_property_n_params_take_ceil_n_over_100_batches(n: int) -> None:
    params = {f"param_{i}": "v" * (i % 50) for i in range(n)}
    assert len(plan_batches(params=params)) == math.ceil(n / 100)


def test_limits_none_means_mlflow_defaults() -> None:
    with pytest.raises(ParamValueTooLongError, match="at most 6000"):
        prepare_params({"p": "x" * 6001}, config(), None)
    with pytest.raises(ConfigError, match="at most 8000"):
        prepare_tags({"t": "x" * 8001}, None)
    assert [len(b.params) for b in plan_batches(params={str(i): "" for i in range(101)})] == [
        100,
        1,
    ]


# --- values trackcfg shortens itself (issue 16, item 14) -------------------------------------


def test_shorten_keeps_the_beginning_and_says_how_long_the_whole_was() -> None:
    from trackcfg._params import shorten

    assert shorten("abc", 3) == "abc"
    note = "\u2026 (11132 characters; full text in artifact kedro/command.txt)"
    assert (
        shorten("k" * 11132, 8000, artifact="kedro/command.txt") == "k" * (8000 - len(note)) + note
    )
    assert shorten("x" * 100, 40) == "x" * 22 + "\u2026 (100 characters)"
    assert len(shorten("x" * 100, 5)) == 5  # a limit shorter than the note: still within it


@pytest.mark.parametrize("length", [9063, 2_000_000])
def test_tag_and_truncate_never_fail_on_length(length: int) -> None:
    """A long param under ``tag`` or ``truncate`` (9063 characters: issue 16's `kedro run
    --params`) is never an error: ``truncate`` keeps the first 6000 characters; ``tag`` keeps
    a tag within MLflow's limit that says it was cut, and the whole value as an artifact."""
    value = "".join(chr(97 + i % 26) for i in range(length))
    truncated = prepare_params({"p": value}, config(LongParamsStrategy.TRUNCATE))
    assert (truncated.params, truncated.tags, truncated.artifacts) == ({"p": value[:6000]}, {}, {})

    tagged = prepare_params({"p": value}, config(LongParamsStrategy.TAG))
    note = f"\u2026 ({length} characters; full text in artifact params/p.txt)"
    assert tagged.params == {}
    assert tagged.tags == {"p": value[: 8000 - len(note)] + note}
    assert tagged.artifacts == {"params/p.txt": value}


# --- metric keys: the param key policy, never merged in silence (issue 16.3) ----------------

metric_keys = st.one_of(key_text, st.integers(-3, 3))


def _series(metrics: Mapping[Any, Any]) -> dict[str, list[str]]:
    """Final metric key -> the keys (as written) that become it, in order."""
    finals: dict[str, list[str]] = {}
    for key in metrics:
        finals.setdefault(sanitize_key(str(key)), []).append(str(key))
    return finals


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(metric_keys, st.floats(allow_nan=False), max_size=6))
def test_property_metric_keys_are_valid_unique_or_refused_naming_both(
    metrics: dict[Any, float],
) -> None:
    finals = _series(metrics)
    merged = {key: written for key, written in finals.items() if len(written) > 1}
    if merged:
        with pytest.raises(ConfigError) as raised:
            trackcfg._params.prepare_metrics(metrics)
        assert {problem.key for problem in raised.value.problems} == set(merged)
        for problem in raised.value.problems:
            first, *others = merged[problem.key]
            assert repr(first) in problem.message
            assert any(repr(other) in problem.message for other in others)
        return
    prepared = trackcfg._params.prepare_metrics(metrics)
    assert set(prepared.values) == set(finals)
    by_text = {str(key): float(value) for key, value in metrics.items()}
    for key, value in prepared.values.items():
        assert mlflow_accepts(key)
        assert sanitize_key(prepared.origins[key]) == key
        assert value == by_text[prepared.origins[key]]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(metric_keys, st.floats(allow_nan=False), max_size=4), max_size=4))
def test_property_metric_keys_never_merge_across_calls(calls: list[dict[Any, float]]) -> None:
    """Whatever the calls, no final key ever holds points of two keys as written."""
    earlier: dict[str, str] = {}
    for metrics in calls:
        try:
            prepared = trackcfg._params.prepare_metrics(metrics, earlier=earlier)
        except ConfigError:
            continue
        for key, written in prepared.origins.items():
            assert earlier.get(key, written) == written
        earlier.update(prepared.origins)
    assert all(sanitize_key(written) == key for key, written in earlier.items())


def test_metric_key_rename_is_warned_once_per_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    first = trackcfg._params.prepare_metrics({"a b!": 1})
    again = trackcfg._params.prepare_metrics({"a b!": 2}, earlier=first.origins)
    assert first.values == {"a b_": 1.0}
    assert again.values == {"a b_": 2.0}
    assert first.warnings == ("metric key 'a b!' is not accepted by MLflow; logged as 'a b_'",)
    assert again.warnings == ()
    assert len(caplog.records) == 1


def test_flatten_logs_a_mapping_that_contains_itself_as_python_prints_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    looped: dict[str, Any] = {"a": 1}
    looped["me"] = looped
    caplog.set_level(logging.WARNING, logger=LOGGER)
    flat = flatten({"d": looped}, recursive=True, sep=".")
    assert {key: str(value) for key, value in flat.items()} == {"d.a": "1", "d.me": "{...}"}
    assert flat["d.me"] is trackcfg._params.CYCLE
    assert "param ['d']['me'] is ['d'] again" in caplog.text
