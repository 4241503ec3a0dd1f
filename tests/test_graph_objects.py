"""InteractionGraph as an honest object: kept flags, one epsilon, derived fields, read-only
arrays, and files that never lose data and never load wrong (issue 7, items 4 and 5)."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from conftest import gaussian_data, model_labels, random_mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from sklearn_lib import (
    EdgeAblationSearch,
    IGEdgeScorer,
    InteractionGraph,
    LeidenModularity,
    LocalInteractionBasis,
)
from sklearn_lib._graph import AblationResult, _epsilon_for, candidate_order
from sklearn_lib._linalg import LayerBasis
from sklearn_lib.adapters import MLPAdapter


@pytest.fixture(scope="module")
def graphs():
    model = random_mlp([4, 6, 5, 3], nn.ReLU, seed=6)
    X, X_eval = gaussian_data(120, 4, seed=6), gaussian_data(100, 4, seed=60)
    y_eval = model_labels(model, X_eval)
    g0 = LocalInteractionBasis(MLPAdapter(model)).fit_transform(X)
    g1 = IGEdgeScorer().fit_transform(g0)
    search = EdgeAblationSearch(metric="loss", tolerance=0.05)
    g2 = search.fit_transform(g1, X_eval=X_eval, y_eval=y_eval)
    g3 = LeidenModularity().fit_transform(g2)
    return g0, g1, g2, g3, (X_eval, y_eval)


def _tied(g1):
    """Edges with ties: pair 0 all candidates equal, pair 1 rounded to one decimal."""
    E0 = g1.edges[0].copy()
    E0[1:, 1:] = 1.0
    E1 = np.round(g1.edges[1] / g1.edges[1].max(), 1)
    return g1.replace(edges=(E0, E1, g1.edges[2]))


# -- kept flags and epsilon ----------------------------------------------------------------------
def test_kept_mask_agrees_with_n_edges_needed_with_ties(graphs):
    g0, g1, g2, g3, (X_eval, y_eval) = graphs
    tied = EdgeAblationSearch(metric="loss", tolerance=0.05).fit_transform(
        _tied(g1), X_eval=X_eval, y_eval=y_eval)
    nx_graph, ig_graph = tied.to_networkx(), tied.to_igraph()
    ig_kept = {(ig_graph.vs[e.source]["layer"], ig_graph.vs[e.source]["feature"],
                ig_graph.vs[e.target]["layer"], ig_graph.vs[e.target]["feature"]): e["kept"]
               for e in ig_graph.es}
    at_epsilon_and_ablated = 0
    for p, ((a, b), r) in enumerate(zip(tied.pairs, tied.ablation)):
        E, mask = tied.edges[p], tied.kept_mask(p)
        assert mask.shape == E.shape and mask.dtype == bool
        assert mask[1:, 1:].sum() == r.n_edges_needed
        assert mask[:, 0].all() and not mask[0, 1:].any()  # from the constant; not into it
        rows, cols, values = candidate_order(E)
        expected = np.zeros_like(mask)
        expected[rows[: r.n_edges_needed], cols[: r.n_edges_needed]] = True
        np.testing.assert_array_equal(mask[1:, 1:], expected[1:, 1:])
        if r.n_edges_needed:
            assert r.epsilon == values[r.n_edges_needed - 1] == E[mask][1:].min() or \
                r.epsilon == E[1:, 1:][mask[1:, 1:]].min()
            at_epsilon_and_ablated += int(((E[1:, 1:] == r.epsilon) & ~mask[1:, 1:]).sum())
        # The exports flag exactly these edges.
        kept_nx = {(u[1], v[1]) for u, v, d in nx_graph.edges(data=True)
                   if d["kept"] and u[0] == a and v[0] == b and u[1] > 0 and v[1] > 0}
        assert kept_nx == {(j, i) for i, j in zip(*np.nonzero(mask[1:, 1:] > 0))
                           for i, j in [(i + 1, j + 1)]}
        assert len(kept_nx) == r.n_edges_needed
        assert sum(1 for (la, j, lb, i), k in ig_kept.items()
                   if k and la == a and lb == b and j > 0 and i > 0) == r.n_edges_needed
    # The ties really straddle epsilon, where `E > epsilon` (the old rule) flags too few and
    # `E >= epsilon` too many.
    assert at_epsilon_and_ablated > 0
    assert 0 < tied.ablation[0].n_edges_needed < tied.ablation[0].n_edges_total


def _synthetic_graph(E: np.ndarray, k: int) -> InteractionGraph:
    """A two-layer graph with identity bases, edges E and an ablation result keeping k."""
    bases = tuple(LayerBasis(name, np.eye(n), np.eye(n), np.ones(n - 1))
                  for name, n in (("a", E.shape[1]), ("b", E.shape[0])))
    _, _, values = candidate_order(E)
    result = AblationResult(
        layer_in="a", layer_out="b", metric="loss", tolerance=0.1, n_edges_total=values.size,
        n_edges_nonzero=int((values > 0).sum()), n_edges_needed=k, n_edges_needed_stable=k,
        epsilon=_epsilon_for(values, k), base_score=1.0, score_at_needed=1.0,
        score_at_one_fewer=float("nan") if k == 0 else 2.0, n_probes=1, probes=((k, 1.0),))
    return InteractionGraph(("a", "b"), bases, "pca", edges=(E,), ablation=(result,))


@settings(max_examples=40, deadline=None)
@given(E=arrays(np.float64, st.tuples(st.integers(2, 6), st.integers(2, 6)),
                elements=st.sampled_from([0.0, 0.5, 1.0, 2.0])), data=st.data())
def test_kept_mask_property(E, data):
    # Few distinct values: ties everywhere. The kept set is the k largest candidates with ties
    # taken in row-major order, as a stable sort of (-E) orders them, and nothing else.
    n_total = (E.shape[0] - 1) * (E.shape[1] - 1)
    k = data.draw(st.integers(0, n_total))
    graph = _synthetic_graph(E, k)
    mask = graph.kept_mask(0)
    cells = [(i, j) for i in range(1, E.shape[0]) for j in range(1, E.shape[1])]
    expected = set(sorted(cells, key=lambda c: -E[c])[:k])
    assert {c for c in cells if mask[c]} == expected
    assert mask[:, 0].all() and not mask[0, 1:].any()
    # Everything kept is at least epsilon, everything ablated at most epsilon.
    if k:
        eps = graph.ablation[0].epsilon
        assert all(E[c] >= eps for c in expected)
        assert all(E[c] <= eps for c in set(cells) - expected)
    kept_nx = sum(1 for u, v, d in graph.to_networkx().edges(data=True)
                  if d["kept"] and u[1] > 0 and v[1] > 0)
    assert kept_nx == k


@settings(max_examples=20, deadline=None)
@given(E=arrays(np.float64, st.tuples(st.integers(2, 5), st.integers(2, 5)),
                elements=st.floats(0, 1e6, allow_subnormal=False)), data=st.data())
def test_save_load_round_trip_property(tmp_path_factory, E, data):
    k = data.draw(st.integers(0, (E.shape[0] - 1) * (E.shape[1] - 1)))
    graph = _synthetic_graph(E, k)
    path = graph.save(tmp_path_factory.mktemp("rt") / "g.npz")
    loaded = InteractionGraph.load(path)
    np.testing.assert_array_equal(loaded.edges[0], E)
    r, q = loaded.ablation[0], graph.ablation[0]
    assert r.to_dict().keys() == q.to_dict().keys()
    for key, value in q.to_dict().items():
        got = r.to_dict()[key]
        assert got == value or (value != value and got != got)  # NaN == NaN
    np.testing.assert_array_equal(loaded.kept_mask(0), graph.kept_mask(0))


def test_kept_mask_errors(graphs):
    g0, g1, g2, g3, _ = graphs
    with pytest.raises(ValueError, match="kept_mask needs ablation in the InteractionGraph; run "
                                         "EdgeAblationSearch first"):
        g1.kept_mask(0)
    with pytest.raises(ValueError, match=r"p must be the index of a layer pair, an int in "
                                         r"\[0, 3\); got 3"):
        g2.kept_mask(3)
    with pytest.raises(ValueError, match="p must be the index of a layer pair"):
        g2.kept_mask("0")


# -- derived fields and read-only arrays ---------------------------------------------------------
def test_replace_drops_what_was_derived(graphs):
    g0, g1, g2, g3, _ = graphs
    new_edges = tuple(2 * E for E in g3.edges)
    out = g3.replace(edges=new_edges)
    assert out.ablation is None and out.communities is None and out.modularity is None
    np.testing.assert_array_equal(out.edges[0], new_edges[0])
    out = g3.replace(bases=g3.bases)
    assert out.edges is None and out.ablation is None and out.communities is None
    out = g3.replace(ablation=g3.ablation)
    assert out.communities is None and out.modularity is None and out.edges is g3.edges
    # Fields nothing derives from keep everything; so do fields replaced together.
    out = g3.replace(adapter=None, X=None)
    assert out.edges is g3.edges and out.ablation == g3.ablation
    assert out.communities is g3.communities and out.modularity == g3.modularity
    out = g3.replace(edges=g3.edges, ablation=g3.ablation)
    assert out.ablation == g3.ablation and out.communities is None


def test_arrays_are_read_only_copies(graphs):
    g0, g1, g2, g3, _ = graphs
    E = g1.edges[0].copy()
    g = g1.replace(edges=(E,) + g1.edges[1:])
    assert E.flags.writeable  # the caller's array is not frozen ...
    E[1, 1] = -5.0
    assert g.edges[0][1, 1] != -5.0  # ... and does not reach the graph
    for arr in (g.edges[0], g3.communities[1], g3.bases[1].C, g3.bases[1].C_pinv,
                g3.bases[1].eigenvalues):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 0
    # Read-only arrays are shared, not copied again, as a graph moves through the steps.
    assert g3.replace(X=None).bases is g3.bases and g2.edges is g1.edges


def test_leiden_refuses_ablation_of_other_edges(graphs):
    g0, g1, g2, g3, _ = graphs
    other = g2.replace(edges=tuple(2 * E for E in g2.edges), ablation=g2.ablation)
    with pytest.raises(ValueError, match=r"The ablation results of pair \('input', '1'\) do not "
                                         r"belong to this graph's edges \(epsilon=.*; rerun "
                                         "EdgeAblationSearch on these edges"):
        LeidenModularity().fit(other)
    with pytest.raises(ValueError, match="do not belong to this graph's edges"):
        other.to_networkx()
    with pytest.raises(ValueError, match=r"graph has 3 layer pairs but 2 ablation results"):
        g2.replace(ablation=g2.ablation[:2]).kept_mask(0)
    swapped = g2.replace(ablation=(g2.ablation[1], g2.ablation[0], g2.ablation[2]))
    with pytest.raises(ValueError, match=r"it is for pair \('1', '3'\)"):
        LeidenModularity().fit(swapped)


# -- saving ---------------------------------------------------------------------------------------
def test_saved_file_holds_numeric_arrays_only(tmp_path, graphs):
    g3 = graphs[3]
    path = g3.save(tmp_path / "g.npz")
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            assert data[key].dtype.kind in "iuf", key
        meta = json.loads(data["meta"].tobytes().decode("utf-8"))
    assert meta["version"] == 3 and meta["ablation"][0]["search"] == "bisect"
    assert meta["completeness_errors"] == list(g3.completeness_errors)
    assert sorted(os.listdir(tmp_path)) == ["g.npz"]  # no temporary file left behind
    loaded = InteractionGraph.load(path)
    assert loaded.ablation == g3.ablation and loaded.modularity == g3.modularity
    for a, b in zip(loaded.communities, g3.communities):
        np.testing.assert_array_equal(a, b)
    assert not loaded.edges[0].flags.writeable


def test_saved_file_mode_is_that_of_a_plain_open(tmp_path, graphs):
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    path = graphs[3].save(tmp_path / "g.npz")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    path.chmod(0o640)  # overwriting keeps the old file's mode
    graphs[3].save(path)
    assert path.stat().st_mode & 0o777 == 0o640


def test_failed_save_keeps_the_old_file(tmp_path, graphs, monkeypatch):
    g1, g3 = graphs[1], graphs[3]
    path = g3.save(tmp_path / "g.npz")
    before = path.read_bytes()

    def broken(fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="No space left on device"):
        g1.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["g.npz"]
    monkeypatch.undo()
    assert InteractionGraph.load(path).communities is not None


def test_save_refuses_non_numeric_arrays(tmp_path, graphs):
    g3 = graphs[3]
    odd = g3.replace(communities=tuple(np.array([str(v) for v in c], dtype=object)
                                       for c in g3.communities))
    with pytest.raises(ValueError, match="array 'communities_0' has dtype object, not a real "
                                         "number type"):
        odd.save(tmp_path / "odd.npz")
    assert not os.listdir(tmp_path)


# -- loading bad files: one ValueError naming the file and the problem ----------------------------
def _members(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _meta_of(members) -> dict:
    return json.loads(members["meta"].tobytes().decode("utf-8"))


def _with_meta(members, meta) -> dict:
    return {**members, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}


def _edit_ablation(**fields):
    def edit(m):
        meta = _meta_of(m)
        meta["ablation"][1].update(fields)
        return _with_meta(m, meta)
    return edit


def _drop(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


def _set(key, value):
    return lambda m: {**m, key: value(m[key]) if callable(value) else value}


def _meta_edit(fn):
    def edit(m):
        meta = _meta_of(m)
        fn(meta)
        return _with_meta(m, meta)
    return edit


BAD_FILES = {
    "missing key": (_drop("edges_1"), r"array 'edges_1' is missing"),
    "missing metadata": (_drop("meta"), r"it is not an InteractionGraph file \(no metadata\)"),
    "wrong edge shape": (_set("edges_1", np.ones((3, 3))),
                         r"edges_1 has shape \(3, 3\); the bases have"),
    "NaN in C": (_set("C_2", lambda C: np.where(np.arange(C.size).reshape(C.shape) == 3,
                                                np.nan, C)),
                 r"array 'C_2' contains NaN or inf"),
    "inf in edges": (_set("edges_0", lambda E: E + np.inf), r"array 'edges_0' contains NaN"),
    "negative edges": (_set("edges_2", lambda E: -E - 1), "edges_2 has negative entries"),
    "integer C": (_set("C_0", lambda C: C.astype(np.int64)),
                  r"array 'C_0' has dtype int64 .* expected a 2-d array of floats"),
    "C_pinv shape": (_set("C_pinv_1", lambda P: P[:-1]), r"C_pinv_1 has shape .* must be"),
    "eigenvalue shape": (_set("eigenvalues_3", lambda v: np.append(v, 1.0)),
                         r"eigenvalues_3 has shape \(4,\); layer '4' has 3 non-fixed"),
    "eigenvalues 2-d": (_set("eigenvalues_0", lambda v: v[None]),
                        r"array 'eigenvalues_0' has dtype float64 and 2 dimensions"),
    "float communities": (_set("communities_1", lambda c: c.astype(float)),
                          r"array 'communities_1' has dtype float64 .*integers"),
    "community shape": (_set("communities_1", lambda c: c[:-1]),
                        r"communities_1 must hold 6 community indices"),
    "metadata not JSON": (_set("meta", np.frombuffer(b"{not json", dtype=np.uint8)),
                          r"the metadata cannot be read \(JSONDecodeError"),
    "metadata not UTF-8": (_set("meta", np.frombuffer(b"\xff\xfe", dtype=np.uint8)),
                           r"the metadata cannot be read \(UnicodeDecodeError"),
    "metadata float array": (_set("meta", np.zeros(3)), "the metadata has dtype float64"),
    "metadata a list": (_set("meta", np.frombuffer(b"[1, 2]", dtype=np.uint8)),
                        "the metadata is not a JSON object"),
    "missing field": (_meta_edit(lambda m: m.pop("layers")),
                      r"metadata field 'layers' is missing"),
    "wrong layers": (_meta_edit(lambda m: m.update(layers=["a", 1, "c", "d"])),
                     r"metadata field 'layers' must be a list of distinct layer names"),
    "too few layers": (_meta_edit(lambda m: m.update(layers=["a", "b"])),
                       r"metadata field 'n_fixed' must be a list of 2 positive ints"),
    "unknown basis": (_meta_edit(lambda m: m.update(basis="ica")),
                      r"metadata field 'basis' must be one of \['lib', 'gib', 'pca'\]"),
    "bool as int": (_meta_edit(lambda m: m.update(n_fixed=[True, 1, 1, 1])),
                    r"metadata field 'n_fixed' must be a list of 4 positive ints"),
    "NaN modularity": (_meta_edit(lambda m: m.update(modularity=float("nan"))),
                       r"metadata field 'modularity' must be null or a finite number"),
    "version": (_meta_edit(lambda m: m.update(version="2")),
                r"it is not an InteractionGraph file of a version this sklearn-lib reads"),
    "ablation count": (_meta_edit(lambda m: m["ablation"].pop()),
                       r"metadata field 'ablation' must be a list of 3 results"),
    "ablation without edges": (
        _meta_edit(lambda m: m.update(has_edges=False, completeness_errors=None)),
        "it has ablation results but no edges"),
    "ablation epsilon": (_edit_ablation(epsilon=123.0),
                         r"ablation result 1 does not belong to the edges \(epsilon=123.0"),
    "ablation total": (_edit_ablation(n_edges_total=7),
                       r"ablation result 1 does not belong to the edges \(7 candidate edges"),
    "ablation layer": (_edit_ablation(layer_in="x"),
                       r"ablation result 1 does not belong to the edges \(it is for pair"),
    "ablation needed": (_edit_ablation(n_edges_needed=10 ** 6),
                        r"ablation result 1 does not belong to the edges \(n_edges_needed=1000000 "
                        r"is outside"),
    "ablation stable": (_edit_ablation(n_edges_needed_stable=-1),
                        r"ablation result 1: n_edges_needed_stable is outside"),
    "ablation nonzero": (_edit_ablation(n_edges_nonzero=0),
                         r"ablation result 1 does not belong to the edges \(0 nonzero candidate"),
    "C too many rows": (_set("C_0", np.ones((9, 5))),
                        r"C_0 has shape \(9, 5\); a basis of layer 'input' needs at least "
                        r"n_fixed=1 and at most 5 rows"),
    "ablation field": (_edit_ablation(unknown=1),
                       r"ablation result 1 has missing fields \[\] or unknown fields "
                       r"\['unknown'\]"),
    "ablation type": (_edit_ablation(n_probes="3"),
                      r"ablation result 1: field 'n_probes' has the wrong type"),
    "ablation metric": (_edit_ablation(metric="f1"), r"ablation result 1: unknown metric 'f1'"),
    "ablation probes": (_edit_ablation(probes=[[1, 2, 3]]),
                        r"ablation result 1: probes must be \[edges kept, score\] pairs"),
    "ablation tolerance": (_edit_ablation(tolerance=-1.0),
                           r"ablation result 1: tolerance and base_score must be finite"),
    "ablation not a dict": (_meta_edit(lambda m: m["ablation"].__setitem__(0, [1])),
                            r"ablation result 0 is not a JSON object"),
    "completeness missing": (_meta_edit(lambda m: m.pop("completeness_errors")),
                             r"metadata field 'completeness_errors' is missing"),
    "completeness count": (_meta_edit(lambda m: m["completeness_errors"].pop()),
                           r"metadata field 'completeness_errors' must be null or a list of 3 "
                           r"finite numbers >= 0"),
    "completeness NaN": (_meta_edit(lambda m: m.update(completeness_errors=[0.1, float("nan"),
                                                                          0.2])),
                         r"metadata field 'completeness_errors' must be null or a list"),
    "completeness negative": (_meta_edit(lambda m: m.update(completeness_errors=[0.1, -1, 0])),
                              r"metadata field 'completeness_errors' must be null or a list"),
    "completeness without edges": (
        _meta_edit(lambda m: m.update(has_edges=False)), "it has completeness errors but no edges"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_load_rejects_bad_file(tmp_path, graphs, case):
    edit, message = BAD_FILES[case]
    good = graphs[3].save(tmp_path / "good.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, **edit(_members(good)))
    with pytest.raises(ValueError, match=f"Cannot load an InteractionGraph from .*bad.npz: "
                                         f"{message}"):
        InteractionGraph.load(bad)


def test_load_rejects_files_that_are_not_graph_archives(tmp_path, graphs):
    good = graphs[3].save(tmp_path / "good.npz")
    cases = {}
    cases["text.npz"] = b"hello, world\n"
    cases["empty.npz"] = b""
    data = good.read_bytes()
    cases["truncated.npz"] = data[: len(data) // 2]
    cases["tail_cut.npz"] = data[:-30]
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"Cannot load an InteractionGraph from "
                                             f".*{name}: "):
            InteractionGraph.load(tmp_path / name)
    # A single .npy array, and an archive with a pickled object array in it.
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single.npy: it holds a single array"):
        InteractionGraph.load(tmp_path / "single.npy")
    members = _members(good)
    members["edges_0"] = np.array([{"a": 1}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **members)
    with pytest.raises(ValueError, match=r"pickled.npz: array 'edges_0' cannot be read"):
        InteractionGraph.load(tmp_path / "pickled.npz")
    # A damaged member: flip bytes inside the compressed stream of one array.
    damaged = bytearray(data)
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("edges_1.npy")
    start = info.header_offset + 30 + len(info.filename) + 40
    damaged[start : start + 20] = bytes(20)
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"damaged.npz: array 'edges_1' cannot be read"):
        InteractionGraph.load(tmp_path / "damaged.npz")
    with pytest.raises(FileNotFoundError):
        InteractionGraph.load(tmp_path / "absent.npz")


def test_version_1_files_still_load(tmp_path, graphs):
    g3 = graphs[3]
    members = _members(g3.save(tmp_path / "g.npz"))
    meta = _meta_of(members)
    meta["version"] = 1
    for r in meta["ablation"]:
        del r["search"], r["n_edges_needed_stable"]
    members["meta"] = np.array(json.dumps(meta))  # version 1 wrote a unicode scalar
    np.savez(tmp_path / "v1.npz", **members)
    loaded = InteractionGraph.load(tmp_path / "v1.npz")
    assert [r.n_edges_needed_stable for r in loaded.ablation] == \
        [r.n_edges_needed for r in g3.ablation]
    assert all(r.search == "bisect" for r in loaded.ablation)


# -- completeness errors ------------------------------------------------------------------------
def test_edges_come_with_their_completeness_errors(graphs):
    g0, g1, g2, g3, _ = graphs
    scorer = IGEdgeScorer().fit(g0)
    g = scorer.transform(g0)
    assert g0.completeness_errors is None
    assert g.completeness_errors == tuple(scorer.completeness_errors_.tolist())
    assert len(g.completeness_errors) == len(g.pairs)
    assert all(type(e) is float for e in g.completeness_errors)
    # kept by the later steps, which do not change the edges
    assert g2.completeness_errors == g1.completeness_errors == g3.completeness_errors
    assert g3.replace(ablation=g3.ablation).completeness_errors == g3.completeness_errors
    # new edges (or bases) drop them, like the ablation results
    assert g3.replace(edges=g3.edges).completeness_errors is None
    assert g3.replace(bases=g3.bases).completeness_errors is None
    kept = g3.replace(edges=g3.edges, completeness_errors=[0.5, 0.0, 1])
    assert kept.completeness_errors == (0.5, 0.0, 1.0) and kept.ablation is None
    assert g3.replace(edges=g3.edges,
                      completeness_errors=np.array([0.5, 0.0, 1.0], dtype=np.float32)
                      ).completeness_errors == (0.5, 0.0, 1.0)


def test_completeness_errors_are_validated(graphs):
    g0, g1 = graphs[:2]
    with pytest.raises(ValueError, match="a graph without edges cannot have them"):
        g0.replace(completeness_errors=(0.1, 0.1, 0.1))
    for bad in [(0.1, 0.1), (0.1, float("nan"), 0.1), (0.1, -0.5, 0.1), (0.1, True, 0.1),
                (0.1, "0.2", 0.1)]:
        with pytest.raises(ValueError, match=r"completeness_errors must hold 3 finite numbers "
                                             r">= 0, one per layer pair"):
            g1.replace(edges=g1.edges, completeness_errors=bad)


def test_completeness_errors_round_trip_and_old_files(tmp_path, graphs):
    g1 = graphs[1]
    loaded = InteractionGraph.load(g1.save(tmp_path / "g.npz"))
    assert loaded.completeness_errors == g1.completeness_errors is not None
    no_errors = InteractionGraph.load(g1.replace(edges=g1.edges).save(tmp_path / "n.npz"))
    assert no_errors.completeness_errors is None and no_errors.edges is not None
    members = _members(tmp_path / "g.npz")  # a version-2 file: written before the field
    meta = _meta_of(members)
    meta["version"] = 2
    del meta["completeness_errors"]
    members["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez(tmp_path / "v2.npz", **members)
    old = InteractionGraph.load(tmp_path / "v2.npz")
    assert old.completeness_errors is None
    np.testing.assert_array_equal(old.edges[1], g1.edges[1])
