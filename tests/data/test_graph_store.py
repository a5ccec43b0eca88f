"""On-disk graphs: streaming conversion of edge lists (equal to read_edge_list
for every chunk size), errors with the file's line, interrupted conversions,
load_graph's checks, PyG's FeatureStore / GraphStore API, bounded memory."""
import gzip
import json
import re
import tracemalloc

import numpy as np
import pytest
import torch

from graphformer.data import OnDiskGraph, convert_edge_list, load_graph, read_edge_list
from graphformer.data.edge_list import convert
from graphformer.errors import DataError

from .test_edge_list import careful_only, put

CHUNKS = [1, 2, 3, 7, 1_000_000]


def same_graph(graph: OnDiskGraph, data) -> None:
    """``graph`` is ``data`` (read_edge_list's): numbering, edges in order, x, y."""
    got = graph.to_data()
    assert graph.num_nodes == data.num_nodes == got.num_nodes
    assert graph.num_edges == data.edge_index.size(1)
    ids = data.node_ids
    if isinstance(ids, torch.Tensor):
        assert torch.equal(got.node_ids, ids)
    else:
        assert got.node_ids == ids
    assert torch.equal(got.edge_index, data.edge_index)
    for key in ("x", "y"):
        assert (key in got) == (key in data)
        if key in data:
            assert got[key].dtype == data[key].dtype
            assert torch.equal(got[key], data[key])
    assert getattr(got, "label_names", None) == getattr(data, "label_names", None)
    # the CSC: grouped by target, stable (file order) within a target, perm -> edge ids
    row, colptr, perm = graph.graph_store.csc()
    col = torch.repeat_interleave(torch.arange(graph.num_nodes), colptr.diff())
    assert torch.equal(data.edge_index[0, perm], row)
    assert torch.equal(data.edge_index[1, perm], col)
    assert sorted(perm.tolist()) == list(range(graph.num_edges))
    for v in range(graph.num_nodes):
        ids_in = perm[colptr[v]:colptr[v + 1]]
        assert torch.equal(ids_in, ids_in.sort().values)


SNAP = ("# Directed graph\n# FromNodeId\tToNodeId\n10\t20\n20  30\n\n\t-5 \t10  \n# late\n"
        "30 -5\n007 7\n10 10\n20 10\n")
CSV = "src,dst\nalice,bob\nbob, carol \n\ncarol,alice\n# c\ndave,alice\nalice,alice\n"
LATE_TEXT = "1 2\n2 3\n3 1\n4 1\n1 4\n007 x\n7 1\n"  # a text id after 6 integer rows
BIG = "1 2\n2 3\n99999999999999999999 1\n3 99999999999999999999\n"
CRLF = "a\tb\r\nb\tc\r\n\r\nc\ta\r\n"


@pytest.mark.parametrize("name, text", [("snap.txt", SNAP), ("e.csv", CSV),
                                        ("late.txt", LATE_TEXT), ("big.txt", BIG),
                                        ("crlf.tsv", CRLF)])
@pytest.mark.parametrize("directed", [True, False])
def test_conversion_equals_read_edge_list_for_every_chunk_size(tmp_path, name, text, directed):
    path = put(tmp_path, name, text)
    expected = read_edge_list(path, directed=directed)
    for chunk in CHUNKS:
        graph = convert_edge_list(path, tmp_path / f"g{chunk}", chunk_rows=chunk,
                                  directed=directed)
        same_graph(graph, expected)
        same_graph(load_graph(tmp_path / f"g{chunk}"), expected)
    assert graph.meta["node_id_type"] == {"snap.txt": "int64", "e.csv": "str", "late.txt": "str",
                                          "big.txt": "int", "crlf.tsv": "str"}[name]


def test_node_files_text_labels_extra_nodes_headers_and_gz(tmp_path):
    edges = tmp_path / "e.txt.gz"
    edges.write_bytes(gzip.compress(b"\xef\xbb\xbfsrc dst\n5 6\n6 7\n7 5\n# x\n8 5\n"))
    x = put(tmp_path, "x.csv", "id,a,b\n7,1,2\n5,3,4\n9,5,6\n6,7,8\n8,9,10\n")
    y = put(tmp_path, "y.tsv", "8\tcat\n7\tdog\n6\tcat\n5\t1\n9\tdog\n10\tant\n")
    x2 = put(tmp_path, "x2.csv", x.read_text() + "10,0,0\n")
    options = dict(node_features=x2, node_labels=y, dtype=torch.float64)
    for directed in (True, False):
        expected = read_edge_list(edges, directed=directed, **options)
        assert expected.label_names == ["1", "ant", "cat", "dog"]
        for chunk in CHUNKS:
            graph = convert_edge_list(edges, tmp_path / f"g{directed}{chunk}", chunk_rows=chunk,
                                      directed=directed, **options)
            same_graph(graph, expected)
            assert graph.num_features == 2 and graph.x_array.dtype == np.float64
    ints = put(tmp_path, "yi.txt", "5 3\n6 0\n7 3\n8 1\n")
    expected = read_edge_list(edges, node_labels=ints)
    for chunk in (1, 3, 100):
        same_graph(convert_edge_list(edges, tmp_path / f"i{chunk}", node_labels=ints,
                                     chunk_rows=chunk), expected)


def test_careful_parser_gives_the_same_graph(tmp_path):
    path = put(tmp_path, "snap.txt", SNAP)
    expected = read_edge_list(path)
    with careful_only():
        same_graph(convert_edge_list(path, tmp_path / "g", chunk_rows=3), expected)


def error_of(call) -> str:
    with pytest.raises(ValueError) as err:
        call()
    return str(err.value)


@pytest.mark.parametrize("name, text, options, line", [
    ("e.txt", "1 2\n" * 20 + "3 4 5\n" + "1 2\n" * 5, {}, 21),           # field count
    ("e.csv", "a,b\n" * 11 + "# c\n\n" + "a,\n", {}, 14),                  # empty id
    ("e.txt", "1 2\n" * 9 + "\n\n" + "3\n", {}, 12),                       # missing column
    ("e.txt", "1 2\n" * 9 + "x \xff\n", {}, None),                          # (valid UTF-8 here)
])
def test_errors_name_the_files_line_in_a_late_chunk(tmp_path, name, text, options, line):
    path = put(tmp_path, name, text)
    if line is None:
        path.write_bytes(b"1 2\n" * 9 + b"x \xff\n")
        line = 10
    expected = error_of(lambda: read_edge_list(path, **options))
    assert expected.startswith(f"{path}, line {line}:")
    for chunk in (1, 2, 3, 4, 7, 1000):
        got = error_of(lambda: convert_edge_list(path, tmp_path / "g", chunk_rows=chunk,
                                                 **options))
        assert got == expected
        assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("x, y, extra", [
    ("1 0.5\n2 x\n3 1\n", None, "add"),              # non-numeric feature, line 2
    ("1 1\n2 2\n3 3\n2 4\n", None, "add"),           # duplicate rows: lines 2 and 4
    ("1 1\n3 3\n", None, "add"),                     # node 2 has no feature row
    ("1 1\n2 2\n3 3\n4 4\n", None, "error"),         # node 4 is in no edge
    (None, "1 a\n2 b\n", "add"),                     # no label row for 3
    (None, "1 5\n2 99999999999999999999\n3 1\n", "add"),  # label beyond int64
    (None, "1 a\n2 b\n3 c\n1 d\n", "add"),           # duplicate label rows
    ("1 1\n2 2\n3 3\n5 5\n", "1 a\n2 b\n3 c\n", "add"),  # 5 has no label row
])
def test_node_file_errors_match_read_edge_list(tmp_path, x, y, extra):
    edges = put(tmp_path, "e.txt", "1 2\n2 3\n")
    options = {"extra_nodes": extra}
    if x is not None:
        options["node_features"] = put(tmp_path, "x.txt", x)
    if y is not None:
        options["node_labels"] = put(tmp_path, "y.txt", y)
    expected = error_of(lambda: read_edge_list(edges, **options))
    assert re.search(r"(x|y)\.txt", expected)
    for chunk in (1, 2, 100):
        assert error_of(lambda: convert_edge_list(edges, tmp_path / "g", chunk_rows=chunk,
                                                  **options)) == expected


def test_a_bad_gzip_file_is_named(tmp_path):
    path = tmp_path / "e.txt.gz"
    path.write_bytes(gzip.compress(b"1 2\n" * 1000)[:-20])
    expected = error_of(lambda: read_edge_list(path))
    got = error_of(lambda: convert_edge_list(path, tmp_path / "g", chunk_rows=10))
    assert got.startswith(f"{path}: not a valid gzip file") and expected.startswith(got[:40])


@pytest.mark.parametrize("where", ["_counting_sort", "_sorted_keys", "_expanded"])
def test_an_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch, where):
    edges = put(tmp_path, "e.txt", "1 2\n2 3\n3 1\n" * 10)
    x = put(tmp_path, "x.txt", "1 1\n2 2\n3 3\n")

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, where, broken)
    with pytest.raises(KeyboardInterrupt):
        convert_edge_list(edges, tmp_path / "out" / "g", node_features=x, directed=False,
                          chunk_rows=4)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    # a failed overwrite keeps the earlier graph whole
    convert_edge_list(edges, tmp_path / "out" / "g", chunk_rows=4)
    monkeypatch.setattr(convert, where, broken)
    with pytest.raises(KeyboardInterrupt):
        convert_edge_list(edges, tmp_path / "out" / "g", directed=False, overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["g"]
    assert load_graph(tmp_path / "out" / "g").num_edges == 30


def test_out_dir_rules(tmp_path):
    edges = put(tmp_path, "e.txt", "1 2\n")
    convert_edge_list(edges, tmp_path / "g")
    with pytest.raises(ValueError, match="overwrite=True"):
        convert_edge_list(edges, tmp_path / "g")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "f").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        convert_edge_list(edges, tmp_path / "other")
    assert convert_edge_list(put(tmp_path, "e2.txt", "1 2\n2 1\n"), tmp_path / "g",
                             overwrite=True).num_edges == 2


def test_text_ids_with_a_carriage_return_keep_their_nodes(tmp_path):
    """A lone CR is text inside an id: the converted graph has the ids
    read_edge_list gives, one per node (the file was read back with CR as a
    line break: one id more, every later node named after its neighbour)."""
    edges = tmp_path / "e.txt"
    edges.write_bytes(b"a\rb c\n" + b"".join(b"c n%d\nn%d a\rb\n" % (i, i) for i in range(3)))
    expected = read_edge_list(edges).node_ids
    assert "a\rb" in list(expected)
    graph = convert_edge_list(edges, tmp_path / "g")
    assert list(graph.node_ids) == list(expected) and len(graph.node_ids) == graph.num_nodes
    assert list(load_graph(tmp_path / "g").node_ids) == list(expected)
    ids = tmp_path / "g" / "node_ids.txt"
    ids.write_text("a\nb\n")
    with pytest.raises(DataError, match="holds 2 node ids for 5 nodes"):
        load_graph(tmp_path / "g")


def test_load_graph_refuses_damaged_folders_by_name(tmp_path):
    edges = put(tmp_path, "e.txt", "1 2\n2 3\n")
    folder = tmp_path / "g"
    convert_edge_list(edges, folder)
    meta = folder / "meta.json"
    good = meta.read_text()
    meta.write_text(good[:len(good) // 2])
    with pytest.raises(DataError, match=re.escape(f"{meta}: damaged meta.json")):
        load_graph(folder)
    meta.unlink()
    with pytest.raises(DataError, match=re.escape(f"{folder}: not a converted graph: no meta")):
        load_graph(folder)
    meta.write_text(good)
    row = folder / "row.npy"
    row.write_bytes(row.read_bytes()[:-8])
    with pytest.raises(DataError, match=re.escape(f"{row}: ")):
        load_graph(folder)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_graph(tmp_path / "nowhere")
    meta.write_text(json.dumps({**json.loads(good), "version": 99}))
    with pytest.raises(DataError, match="version"):
        load_graph(folder)


def test_the_stores_answer_pygs_api(tmp_path):
    edges = put(tmp_path, "e.txt", "0 1\n1 2\n2 0\n3 0\n0 3\n")
    x = put(tmp_path, "x.txt", "".join(f"{v} {v}.5 {-v}\n" for v in range(4)))
    y = put(tmp_path, "y.txt", "0 1\n1 0\n2 1\n3 2\n")
    graph = convert_edge_list(edges, tmp_path / "g", node_features=x, node_labels=y)
    assert graph.meta["node_id_type"] == "range" and graph.node_ids.tolist() == [0, 1, 2, 3]
    fs, gs = graph.data
    idx = torch.tensor([3, 1])
    assert fs[None, "x", idx].tolist() == [[3.5, -3.0], [1.5, -1.0]]
    assert fs.get_tensor(group_name=None, attr_name="y", index=idx).tolist() == [2, 0]
    assert fs[None, "y"][idx].tolist() == [2, 0]                # an AttrView, then rows
    assert fs.get_tensor_size(group_name=None, attr_name="x") == (4, 2)
    assert sorted(a.attr_name for a in fs.get_all_tensor_attrs()) == ["x", "y"]
    row, colptr = gs.get_edge_index(edge_type=None, layout="csc")
    assert row.tolist() == [2, 3, 0, 1, 0] and colptr.tolist() == [0, 2, 3, 4, 5]
    base = graph.row_array.ctypes.data  # no copy: the tensor is the memory map
    assert row.data_ptr() == base
    coo = gs.get_edge_index(None, "coo")
    assert torch.stack(coo).tolist() == [[2, 3, 0, 1, 0], [0, 0, 1, 2, 3]]
    rowptr, col = gs.get_edge_index(None, "csr")
    assert rowptr.tolist() == [0, 2, 3, 4, 5] and col.tolist() == [1, 3, 2, 0, 0]
    row, colptr, perm = gs.csc()
    assert perm.tolist() == [2, 3, 0, 1, 4]
    [attr] = gs.get_all_edge_attrs()
    assert attr.edge_type is None and attr.size == (4, 4)
    with pytest.raises(KeyError):
        gs.get_edge_index(("a", "to", "b"), "csc")


def test_conversion_memory_is_bounded_by_the_chunk(tmp_path):
    """200k edges in chunks of 5k: numpy's (and Python's) peak allocation stays
    far below the size of the edge arrays written (the CSC goes to memory
    maps), and does not grow when the file doubles."""
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 5_000, size=(200_000, 2))
    text = "\n".join(f"{a} {b}" for a, b in pairs.tolist()) + "\n"
    small, large = put(tmp_path, "small.txt", text), put(tmp_path, "large.txt", text * 2)
    for directed in (True, False):
        peaks = []
        for path in (small, large):
            tracemalloc.start()
            graph = convert_edge_list(path, tmp_path / f"g{directed}{path.stem}",
                                      chunk_rows=5_000, directed=directed)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            full = graph.num_edges * 2 * 8  # row and perm, int64
            assert peaks[-1] < full / 2, (peaks, full)
        assert peaks[1] < 1.2 * peaks[0], peaks
        row, colptr, perm = graph.graph_store.csc()
        assert int(colptr[-1]) == graph.num_edges == (len(perm) if directed else len(row))
    assert graph.num_nodes == len(np.unique(pairs))
