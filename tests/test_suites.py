"""attnbench.engine.suites: built-in suites, suite files, and resolving them with command-line overrides."""

from typing import ClassVar

import pytest

from attnbench.core import registry
from attnbench.core.errors import UserError
from attnbench.engine.suites import (
    Overrides,
    SuiteSpec,
    builtin_suites,
    load_suite,
    parse_param_flags,
    parse_suite,
    resolve,
)
from attnbench.workloads.full import ChunkedAttention

BUILTIN_VARIANTS = {"full.naive", "full.sdpa", "full.chunked"}


def spec(sweep=None, settings=None, params=None, name="t", source="t.toml"):
    return SuiteSpec(
        name=name,
        source=source,
        description="",
        sweep={"variants": ["full.sdpa"], "backends": ["cpu"], "seq_lens": [64], **(sweep or {})},
        settings=dict(settings or {}),
        params=dict(params or {}),
    )


def resolve_with(**over):
    return resolve(spec(), Overrides(**over))


class SubquadraticTestAttention(ChunkedAttention):
    name: ClassVar[str] = "full.test_linear"
    subquadratic: ClassVar[bool] = True


@pytest.fixture
def subquadratic_variant(monkeypatch):
    registry.load_plugins()
    monkeypatch.setitem(registry.WORKLOADS, SubquadraticTestAttention.name, SubquadraticTestAttention)
    return SubquadraticTestAttention.name


# ----------------------------------------------------------------------------- built-in suites


def test_builtin_suites_listed_with_descriptions():
    suites = builtin_suites()
    assert {"smoke", "default", "long"} <= set(suites)
    assert all(isinstance(d, str) and d for d in suites.values())


@pytest.mark.parametrize("name", ["smoke", "default", "long"])
def test_builtin_suite_loads(name):
    s = load_suite(name)
    assert s.name == name
    assert s.source == f"built-in suite {name}"
    assert s.description == builtin_suites()[name]
    assert s.sweep["seq_lens"] and all(isinstance(n, int) and n > 0 for n in s.sweep["seq_lens"])
    assert s.settings["max_time_per_case"] > 0


@pytest.mark.parametrize("name", ["smoke", "default"])
def test_builtin_suite_resolves_all_variants_on_cpu(name):
    sweep, settings = resolve(load_suite(name), Overrides())
    assert set(sweep.variants) >= BUILTIN_VARIANTS
    assert "cpu" in sweep.backends
    assert sweep.seq_lens == tuple(load_suite(name).sweep["seq_lens"])
    assert settings["max_time_per_case"] == load_suite(name).settings["max_time_per_case"]


def test_smoke_suite_is_short():
    sweep, _ = resolve(load_suite("smoke"), Overrides())
    assert sweep.seq_lens == (256, 300)
    assert sweep.heads == (4,) and sweep.head_dim == (32,)


def test_long_suite_runs_subquadratic_variants_against_the_dense_baseline(subquadratic_variant):
    sweep, _ = resolve(load_suite("long"), Overrides())
    assert subquadratic_variant in sweep.variants
    assert sweep.variants[0] == "full.sdpa"  # the baseline the report's speedups and memory ratios use
    assert not {"full.naive", "full.chunked"} & set(sweep.variants)
    assert all(registry.WORKLOADS[v].subquadratic for v in sweep.variants[1:])
    assert {8192, 16384, 32768} <= set(sweep.seq_lens) and max(sweep.seq_lens) == 32768


def test_unknown_builtin_suite():
    with pytest.raises(UserError) as e:
        load_suite("smok")
    assert "unknown suite 'smok'" in str(e.value)
    assert "smoke" in str(e.value) and "default" in str(e.value)


def test_missing_suite_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(UserError, match="does not exist") as e:
        load_suite(str(missing))
    assert str(missing) in str(e.value)


def test_suite_file_loads(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'description = "mine"\n'
        "[sweep]\n"
        'variants = "full.sdpa"\n'  # a scalar stands for a one-item list
        "seq_lens = [32, 64]\n"
        "[settings]\n"
        "max_time_per_case = 0.5\n"
        '[params."full.chunked"]\n'
        "chunk = 16\n"
    )
    s = load_suite(str(path))
    assert s.name == "mine"
    assert s.source == str(path)
    assert s.description == "mine"
    assert s.sweep == {"variants": ["full.sdpa"], "seq_lens": [32, 64]}
    assert s.settings == {"max_time_per_case": 0.5}
    assert s.params == {"full.chunked": {"chunk": [16]}}


# ----------------------------------------------------------------------------- parse errors


def test_invalid_toml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('description = "x"\n[sweep]\nseq_lens = [1, 2\nvariants = ["all"]\n')
    with pytest.raises(UserError) as e:
        load_suite(str(path))
    msg = str(e.value)
    assert str(path) in msg
    assert "invalid TOML" in msg
    assert "line" in msg


def test_invalid_toml_parse_suite_uses_source():
    with pytest.raises(UserError, match=r"^my/suite\.toml: invalid TOML: .*line 2"):
        parse_suite("a = 1\nb = = 2\n", "suite", "my/suite.toml")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("sweeps = 1\n", "unknown top-level key 'sweeps'"),
        ("[sweep]\nseq_len = [1]\n", "unknown key 'seq_len' in [sweep]"),
        ("[settings]\nmax_time = 1.0\n", "unknown key 'max_time' in [settings]"),
    ],
)
def test_unknown_keys_refused(text, fragment):
    with pytest.raises(UserError) as e:
        parse_suite(text, "s", "s.toml")
    msg = str(e.value)
    assert msg.startswith("s.toml: ")
    assert fragment in msg
    assert "known:" in msg


@pytest.mark.parametrize("text", ["sweep = 3\n", "[params]\nchunk = 1\n"])
def test_non_table_sections_refused(text):
    with pytest.raises(UserError):
        parse_suite(text, "s", "s.toml")


# ----------------------------------------------------------------------------- resolve: names


def test_unknown_variant_suggests_closest():
    with pytest.raises(UserError) as e:
        resolve_with(variants=["full.sdp"])
    msg = str(e.value)
    assert "unknown variant 'full.sdp'" in msg
    assert "did you mean 'full.sdpa'" in msg


def test_unknown_backend_refused():
    with pytest.raises(UserError, match="unknown backend 'cpuu'"):
        resolve_with(backends=["cpuu"])


def test_unknown_param_lists_valid_ones():
    with pytest.raises(UserError) as e:
        resolve_with(params=["full.chunked.chunks=64"])
    msg = str(e.value)
    assert "unknown parameter 'chunks' for full.chunked" in msg
    assert "valid: chunk, causal" in msg


def test_unknown_param_in_suite_names_source():
    with pytest.raises(UserError, match=r"^t\.toml: unknown parameter 'size' for full\.sdpa; valid: causal"):
        resolve(spec(params={"full.sdpa": {"size": [1]}}), Overrides())


def test_param_for_unknown_variant_refused():
    with pytest.raises(UserError, match=r"did you mean 'full\.chunked'"):
        resolve_with(params=["full.chunk.chunk=64"])


def test_all_selector():
    sweep, _ = resolve_with(variants=["all"])
    registry.load_plugins()
    assert list(sweep.variants) == sorted(registry.WORKLOADS)
    assert set(sweep.variants) >= BUILTIN_VARIANTS


def test_selectors_deduplicate():
    sweep, _ = resolve_with(variants=["full.sdpa", "all", "full.naive"])
    assert sweep.variants[0] == "full.sdpa"
    assert len(sweep.variants) == len(set(sweep.variants))
    assert set(sweep.variants) >= BUILTIN_VARIANTS


def test_subquadratic_selector(subquadratic_variant):
    sweep, _ = resolve_with(variants=["subquadratic"])
    assert subquadratic_variant in sweep.variants
    assert not BUILTIN_VARIANTS & set(sweep.variants)


def test_available_backends():
    sweep, _ = resolve_with(backends=["available"])
    assert "cpu" in sweep.backends


# ----------------------------------------------------------------------------- resolve: values


@pytest.mark.parametrize("bad", [["0"], ["-5"], ["256", "0"]])
def test_non_positive_seq_lens_refused(bad):
    with pytest.raises(UserError, match=r"sequence lengths \(--seq-lens\) must be positive"):
        resolve_with(seq_lens=bad)


@pytest.mark.parametrize("bad", [["abc"], ["1.5"]])
def test_non_integer_seq_lens_refused(bad):
    with pytest.raises(UserError, match="must be whole numbers"):
        resolve_with(seq_lens=bad)


def test_fractional_seq_len_in_suite_refused():
    with pytest.raises(UserError, match=r"must be whole numbers, got 1\.5"):
        resolve(spec(sweep={"seq_lens": [1.5]}), Overrides())


def test_empty_seq_lens_refused():
    with pytest.raises(UserError, match="is empty"):
        resolve_with(seq_lens=[])


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"dtypes": ["float8"]}, "unknown dtype 'float8'; choose from float32, float64, bfloat16, float16"),
        ({"modes": ["backward"]}, "unknown mode 'backward'; choose from forward, train"),
        ({"scopes": ["block"]}, "unknown scope 'block'; choose from core, layer"),
        ({"heads": ["0"]}, "head counts (--heads) must be positive"),
        ({"batch": ["x"]}, "batch sizes (--batch) must be whole numbers"),
        ({"threads": ["0"]}, "threads must be positive"),
        ({"max_time_per_case": 0.0}, "max_time_per_case must be a positive, finite number"),
        ({"target_rel_ci": -0.1}, "target_rel_ci must be a positive, finite number"),
        ({"timeout_s": float("inf")}, "timeout_s must be a positive, finite number, got inf"),
    ],
)
def test_bad_values_refused(over, fragment):
    with pytest.raises(UserError) as e:
        resolve_with(**over)
    assert fragment in str(e.value)


def test_values_parsed_in_order():
    sweep, _ = resolve_with(seq_lens=["512", "128"], dtypes=["float64", "float32"], modes=["forward", "train"])
    assert sweep.seq_lens == (512, 128)
    assert sweep.dtypes == ("float64", "float32")
    assert sweep.modes == ("forward", "train")


@pytest.mark.parametrize(
    ("axis", "values"),
    [("seq_lens", ["512", "128", "512"]), ("dtypes", ["float64", "float32", "float64"]), ("threads", ["2", "2"])],
)
def test_a_value_given_twice_is_refused(axis, values):
    # Silently measuring it once hid typos (issue 21: "duplicate values all get one line").
    with pytest.raises(UserError, match="twice; give each value once"):
        resolve_with(**{axis: values})


@pytest.mark.parametrize("threads", [None, ["auto"]])
def test_threads_default_is_backend_choice(threads):
    sweep, _ = resolve_with(threads=threads)
    assert sweep.threads == (None,)


# ----------------------------------------------------------------------------- --param


def test_param_flag_sweeps_values_as_ints():
    sweep, _ = resolve_with(variants=["full.chunked"], params=["full.chunked.chunk=256,512"])
    assert sweep.params_for("full.chunked") == {"chunk": (256, 512)}
    assert all(type(v) is int for v in sweep.params_for("full.chunked")["chunk"])


def test_param_flags_parse():
    assert parse_param_flags(["full.chunked.chunk=256, 512", "full.sdpa.causal=true"]) == {
        "full.chunked": {"chunk": ["256", " 512"]},
        "full.sdpa": {"causal": ["true"]},
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", (True,)), ("false", (False,)), ("True,False", (True, False)), ("false,true", (False, True))],
)
def test_param_flag_bools(raw, expected):
    sweep, _ = resolve_with(params=[f"full.sdpa.causal={raw}"])
    assert sweep.params_for("full.sdpa") == {"causal": expected}
    assert all(type(v) is bool for v in expected)


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [
        ("full.sdpa.causal=maybe", "full.sdpa.causal must be true or false, got 'maybe'"),
        ("full.chunked.chunk=big", "full.chunked.chunk must be int, got 'big'"),
        ("full.chunked.chunk=1.5", "full.chunked.chunk must be int, got '1.5'"),
    ],
)
def test_param_flag_bad_values(flag, fragment):
    with pytest.raises(UserError) as e:
        resolve_with(params=[flag])
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "flag",
    ["full.chunked.chunk", "chunk=256", "full.chunked.chunk=", "full.chunked.chunk=  ", ".chunk=1", "full.chunked.=1"],
)
def test_malformed_param_flags_refused(flag):
    with pytest.raises(UserError, match=r"should look like family\.variant\.parameter=value"):
        parse_param_flags([flag])
    with pytest.raises(UserError, match="should look like"):
        resolve_with(params=[flag])


def test_param_flag_with_only_commas_refused():
    with pytest.raises(UserError):
        parse_param_flags(["full.chunked.chunk=,"])


def test_suite_param_types_checked():
    with pytest.raises(UserError, match=r"full\.chunked\.chunk must be int, got 1\.5"):
        resolve(spec(params={"full.chunked": {"chunk": [1.5]}}), Overrides())
    with pytest.raises(UserError, match=r"full\.sdpa\.causal must be true or false, got 1"):
        resolve(spec(params={"full.sdpa": {"causal": [1]}}), Overrides())


def test_suite_param_values_keep_their_toml_types():
    # A suite file has types: "64" for a whole number, or "yes" for true/false, is a wrong type
    # (issue 21: such strings were read like command-line text, so "false" could mean true).
    for value, expected in (("64", "int"), ("yes", "true or false")):
        name = "chunk" if value == "64" else "causal"
        with pytest.raises(UserError, match=f"full.chunked.{name} must be {expected}, not the string '{value}'"):
            resolve(spec(params={"full.chunked": {name: [value]}}), Overrides())
    sweep, _ = resolve(spec(params={"adaptive.act": {"target_steps": [2]}}), Overrides())
    assert sweep.params_for("adaptive.act") == {"target_steps": (2.0,)}  # ints widen to float defaults


def test_suite_bool_for_int_param_refused():
    with pytest.raises(UserError):
        resolve(spec(params={"full.chunked": {"chunk": [True]}}), Overrides())


# ----------------------------------------------------------------------------- overrides


def test_cli_overrides_beat_suite_values():
    s = spec(
        sweep={"variants": ["full.naive"], "seq_lens": [128, 256], "heads": [2], "dtypes": ["float64"]},
        settings={"max_time_per_case": 5.0, "target_rel_ci": 0.05, "seed": 3},
        params={"full.chunked": {"chunk": [64], "causal": [True]}},
    )
    sweep, settings = resolve(
        s,
        Overrides(
            variants=["full.chunked"],
            seq_lens=["32"],
            dtypes=["float32"],
            params=["full.chunked.chunk=16,8"],
            max_time_per_case=0.5,
        ),
    )
    assert sweep.variants == ("full.chunked",)
    assert sweep.seq_lens == (32,)
    assert sweep.dtypes == ("float32",)
    assert sweep.heads == (2,)  # not overridden: the suite's value stands
    # --param replaces the suite's chunk list but keeps its other parameters.
    assert sweep.params_for("full.chunked") == {"chunk": (16, 8), "causal": (True,)}
    assert settings == {"max_time_per_case": 0.5, "target_rel_ci": 0.05, "seed": 3}


def test_suite_values_used_without_overrides():
    s = spec(
        sweep={"seq_lens": [128, 256], "batch": [2], "modes": ["train"], "scopes": ["layer"]},
        settings={"max_time_per_case": 5.0},
        params={"full.sdpa": {"causal": [True]}},
    )
    sweep, settings = resolve(s, Overrides())
    assert sweep.seq_lens == (128, 256)
    assert sweep.batch == (2,)
    assert sweep.modes == ("train",)
    assert sweep.scopes == ("layer",)
    assert sweep.params_for("full.sdpa") == {"causal": (True,)}
    assert settings == {"max_time_per_case": 5.0}


def test_sweep_defaults_when_suite_omits_axes():
    s = SuiteSpec("t", "t.toml", "", {"seq_lens": [64]}, {}, {})
    sweep, _ = resolve(s, Overrides())
    registry.load_plugins()
    assert list(sweep.variants) == sorted(registry.WORKLOADS)  # "all"
    assert "cpu" in sweep.backends  # "available"
    assert (sweep.batch, sweep.heads, sweep.head_dim) == ((1,), (8,), (64,))
    assert (sweep.dtypes, sweep.modes, sweep.scopes, sweep.threads) == (("float32",), ("forward",), ("core",), (None,))


def test_default_suite_has_its_baseline_in_every_scope_it_runs():
    # adaptive.* and hierarchical.han have only a layer form: full.sdpa follows them there, so
    # their rows get a speedup and a crossover.
    from attnbench.engine.expand import expand

    cases = expand(resolve(load_suite("default"), Overrides())[0])
    scopes = {c.scope for c in cases}
    assert scopes == {"core", "layer"}
    for scope in scopes:
        lens = {c.seq_len for c in cases if c.scope == scope}
        assert {c.seq_len for c in cases if c.scope == scope and c.variant == "full.sdpa"} == lens


def test_the_baseline_does_not_follow_when_the_sweep_lacks_it():
    from attnbench.engine.expand import expand

    sweep, _ = resolve(load_suite("default"), Overrides(variants=["adaptive.universal"]))
    assert {(c.variant, c.scope) for c in expand(sweep)} == {("adaptive.universal", "layer")}
