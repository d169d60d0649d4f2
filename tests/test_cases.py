"""attnbench.core.cases: case identity, sweep expansion, sweep (de)serialisation."""

import dataclasses
import json
from typing import ClassVar

import pytest

from attnbench.core import registry
from attnbench.core.cases import Case, Sweep, freeze_params
from attnbench.core.errors import UserError
from attnbench.engine.expand import expand
from attnbench.workloads.full import NaiveAttention


def make_case(**changes):
    base = Case(
        variant="full.chunked",
        params=(("causal", False), ("chunk", 256)),
        scope="core",
        backend="cpu",
        dtype="float32",
        mode="forward",
        batch=1,
        heads=8,
        head_dim=64,
        seq_len=1024,
        threads=None,
    )
    return dataclasses.replace(base, **changes)


# ----------------------------------------------------------------------------- case_id


def test_case_id_is_pinned():
    # Result files from earlier runs are matched by case_id (resume, comparisons): the scheme
    # must not change by accident. If it changes on purpose, update this string.
    assert make_case().case_id == "full.chunked-cpu-n1024-2cca596734"


def test_case_id_same_fields_same_id():
    a = make_case()
    b = make_case()
    assert a is not b
    assert a.case_id == b.case_id
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize(
    "change",
    [
        {"variant": "full.naive", "params": (("causal", False),)},
        {"params": (("causal", False), ("chunk", 512))},
        {"params": (("causal", True), ("chunk", 256))},
        {"scope": "layer"},
        {"backend": "other"},
        {"dtype": "float64"},
        {"mode": "train"},
        {"batch": 2},
        {"heads": 4},
        {"head_dim": 32},
        {"seq_len": 2048},
        {"threads": 4},
        {"threads": 1},
        {"impl": "masked_sdpa"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_case_id_differs_when_a_field_differs(change):
    assert make_case(**change).case_id != make_case().case_id


def test_case_id_covers_every_field():
    # A field added to Case without reaching the id would make different cases collide.
    # (transform "none", impl "native" and revision 1 are left out of the id on purpose, so ids from
    # before they existed hold; neutral_params says which params stay out, and is not itself identity.)
    covered = set(make_case(transform="int8", revision=2, impl="masked_sdpa").identity())
    assert covered == {f.name for f in dataclasses.fields(Case)} - {"neutral_params"}


def test_revision_changes_the_id_and_revision_one_keeps_it():
    base = make_case()
    assert make_case(revision=1).case_id == base.case_id
    assert make_case(revision=2).case_id != base.case_id
    assert make_case(revision=2).case_id != make_case(revision=3).case_id


def test_neutral_params_stay_out_of_the_id():
    # A parameter added later, at the value that reproduces the earlier definition, keeps the
    # case_id the case had before the parameter existed; at any other value it splits the id.
    before = make_case(params=(("causal", False), ("chunk", 256)))
    at_neutral = make_case(params=(("causal", False), ("chunk", 256), ("new", "old")), neutral_params=("new",))
    elsewhere = make_case(params=(("causal", False), ("chunk", 256), ("new", "other")))
    assert at_neutral.case_id == before.case_id
    assert elsewhere.case_id != before.case_id
    assert at_neutral.params_dict["new"] == "old"  # still recorded and shown
    assert "new=old" in at_neutral.label()


def test_case_id_shape():
    c = make_case(seq_len=300, backend="cpu")
    prefix, digest = c.case_id.rsplit("-", 1)
    assert prefix == "full.chunked-cpu-n300"
    assert len(digest) == 10
    int(digest, 16)


def test_case_helpers():
    c = make_case()
    assert c.family == "full"
    assert c.params_dict == {"causal": False, "chunk": 256}
    assert c.label() == "full.chunked[causal=False,chunk=256] cpu/float32/forward n=1024"
    assert make_case(variant="full.sdpa", params=()).label() == "full.sdpa cpu/float32/forward n=1024"


def test_group_key_ignores_only_seq_len():
    assert make_case(seq_len=1).group_key() == make_case(seq_len=99).group_key()
    assert make_case(dtype="float64").group_key() != make_case().group_key()
    assert make_case(params=(("causal", False), ("chunk", 512))).group_key() != make_case().group_key()


# ----------------------------------------------------------------------------- expand


def test_expand_product_size_and_fields():
    sweep = Sweep(
        variants=("full.naive", "full.chunked"),
        backends=("cpu",),
        seq_lens=(1024, 256, 512),
        dtypes=("float32", "float64"),
        modes=("forward", "train"),
        params=freeze_params({"full.chunked": {"chunk": (128, 256)}}),
    )
    cases = expand(sweep)
    # naive: 2 dtypes x 2 modes x 3 lengths; chunked: the same x 2 chunk sizes
    assert len(cases) == 12 + 24
    assert len({c.case_id for c in cases}) == len(cases)
    chunked = [c for c in cases if c.variant == "full.chunked"]
    assert {c.params_dict["chunk"] for c in chunked} == {128, 256}
    assert {c.seq_len for c in cases} == {256, 512, 1024}
    assert all(c.backend == "cpu" and c.scope == "core" and c.threads is None for c in cases)
    assert all(c.batch == 1 and c.heads == 8 and c.head_dim == 64 for c in cases)


def test_expand_orders_each_curve_by_increasing_length_contiguously():
    sweep = Sweep(
        variants=("full.sdpa", "full.chunked"),
        backends=("cpu",),
        seq_lens=(4096, 128, 1024, 512),
        dtypes=("float32", "float64"),
        threads=(None, 2),
        params=freeze_params({"full.chunked": {"chunk": (64, 128)}}),
    )
    cases = expand(sweep)
    curves = {}
    order = []
    for c in cases:
        key = c.group_key()
        if key not in curves:
            curves[key] = []
            order.append(key)
        else:
            # A curve's cases are adjacent: no other curve starts in between.
            assert order[-1] == key, "cases of one curve are not contiguous"
        curves[key].append(c.seq_len)
    assert len(curves) == (1 + 2) * 2 * 2
    for lengths in curves.values():
        assert lengths == [128, 512, 1024, 4096]


def test_expand_resolves_default_params():
    implicit = expand(Sweep(variants=("full.chunked",), backends=("cpu",), seq_lens=(256,)))
    explicit = expand(
        Sweep(
            variants=("full.chunked",),
            backends=("cpu",),
            seq_lens=(256,),
            params=freeze_params({"full.chunked": {"chunk": (1024,), "causal": (False,)}}),
        )
    )
    assert len(implicit) == len(explicit) == 1
    assert implicit[0].params == (("causal", False), ("chunk", 1024))  # every parameter, sorted by name
    assert implicit[0].case_id == explicit[0].case_id


def test_expand_partial_params_keep_other_defaults():
    cases = expand(
        Sweep(
            variants=("full.chunked",),
            backends=("cpu",),
            seq_lens=(256,),
            params=freeze_params({"full.chunked": {"causal": (True,)}}),
        )
    )
    assert [c.params for c in cases] == [(("causal", True), ("chunk", 1024))]


def test_expand_deduplicates():
    sweep = Sweep(
        variants=("full.naive", "full.naive"),
        backends=("cpu", "cpu"),
        seq_lens=(256, 256, 128),
        dtypes=("float32", "float32"),
        params=freeze_params({"full.naive": {"causal": (False, False)}}),
    )
    cases = expand(sweep)
    assert [c.seq_len for c in cases] == [128, 256]


def test_expand_unknown_variant_is_user_error():
    with pytest.raises(UserError, match=r"did you mean 'full\.sdpa'"):
        expand(Sweep(variants=("full.sdp",), backends=("cpu",), seq_lens=(8,)))


def test_expand_invalid_param_value_is_user_error():
    sweep = Sweep(
        variants=("full.chunked",),
        backends=("cpu",),
        seq_lens=(8,),
        params=freeze_params({"full.chunked": {"chunk": (0,)}}),
    )
    with pytest.raises(UserError, match=r"invalid parameters for full\.chunked.*chunk must be positive"):
        expand(sweep)


class CoreOnlyAttention(NaiveAttention):
    name: ClassVar[str] = "full.test_core_only"
    scopes: ClassVar[tuple[str, ...]] = ("core",)


def test_expand_skips_scopes_a_variant_lacks(monkeypatch):
    registry.load_plugins()
    monkeypatch.setitem(registry.WORKLOADS, CoreOnlyAttention.name, CoreOnlyAttention)
    sweep = Sweep(
        variants=("full.naive", CoreOnlyAttention.name),
        backends=("cpu",),
        seq_lens=(64,),
        scopes=("core", "layer"),
    )
    got = sorted((c.variant, c.scope) for c in expand(sweep))
    assert got == [
        ("full.naive", "core"),
        ("full.naive", "layer"),
        (CoreOnlyAttention.name, "core"),
    ]
    # Asked only for a scope it lacks, a variant runs in its own first scope (and says so)
    # rather than silently dropping out of a sweep over "all".
    only_layer = Sweep(variants=(CoreOnlyAttention.name,), backends=("cpu",), seq_lens=(64,), scopes=("layer",))
    assert [c.scope for c in expand(only_layer)] == ["core"]


# ----------------------------------------------------------------------------- Sweep JSON


def test_sweep_json_round_trip():
    sweep = Sweep(
        variants=("full.chunked", "full.sdpa"),
        backends=("cpu",),
        seq_lens=(256, 300),
        batch=(1, 2),
        heads=(4,),
        head_dim=(32,),
        dtypes=("float32", "bfloat16"),
        modes=("forward", "train"),
        scopes=("core", "layer"),
        threads=(None, 2),
        params=freeze_params(
            {"full.chunked": {"chunk": (64, 128), "causal": (True,)}, "full.sdpa": {"causal": (False,)}}
        ),
    )
    d = sweep.to_json()
    assert d["params"] == {"full.chunked": {"causal": [True], "chunk": [64, 128]}, "full.sdpa": {"causal": [False]}}
    # Through real JSON text, as run.json stores it.
    back = Sweep.from_json(json.loads(json.dumps(d)))
    assert back == sweep
    assert back.params_for("full.chunked") == {"causal": (True,), "chunk": (64, 128)}
    assert [c.case_id for c in expand(back)] == [c.case_id for c in expand(sweep)]


def test_sweep_json_round_trip_defaults():
    sweep = Sweep(variants=("full.naive",), backends=("cpu",), seq_lens=(8,))
    assert Sweep.from_json(json.loads(json.dumps(sweep.to_json()))) == sweep


def test_params_for_unnamed_variant_is_empty():
    sweep = Sweep(variants=("full.naive",), backends=("cpu",), seq_lens=(8,))
    assert sweep.params_for("full.naive") == {}


def test_label_names_the_layer_scope():
    # Two cases of one variant that differ only in scope (full.sdpa following a layer-only
    # variant) must not read alike in the progress lines.
    layer = make_case(variant="full.sdpa", params=(), scope="layer")
    assert layer.label() == "full.sdpa cpu/float32/forward/layer n=1024"
