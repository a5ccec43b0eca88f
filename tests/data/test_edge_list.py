"""Edge-list I/O: formats, headers, ids, values, node files, errors, round trip, fuzz."""
import contextlib
import gzip
import math
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Data

from graphformer.data.edge_list import careful, fast
from graphformer.data.edge_list import read_edge_list, write_edge_list


def put(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def edges_of(data) -> list:
    """Edges as pairs of original ids, in edge order."""
    ids = data.node_ids.tolist() if isinstance(data.node_ids, torch.Tensor) else data.node_ids
    return [(ids[s], ids[t]) for s, t in data.edge_index.t().tolist()]


def at(path: Path, line: int) -> str:
    """Regex for the 'file, line N:' start of an error message."""
    return re.escape(f"{path}, line {line}:")


@contextlib.contextmanager
def careful_only():
    """Within it, the vectorised parser always declines: every file goes
    through the careful line-by-line pass."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast, "parse_fast", lambda *args, **kwargs: None)
        yield


# --------------------------------------------------------------------------- #
# Formats                                                                     #
# --------------------------------------------------------------------------- #

def test_whitespace_snap_file(tmp_path):
    path = put(tmp_path, "web.txt", "# Directed graph\n# FromNodeId\tToNodeId\n"
                                    "10\t20\n20  30\n\t-5 \t10  \n")
    data = read_edge_list(path)
    assert data.edge_index.dtype == torch.long
    assert data.edge_index.tolist() == [[0, 1, 3], [1, 2, 0]]
    assert data.node_ids.tolist() == [10, 20, 30, -5]
    assert data.num_nodes == 4
    assert "edge_weight" not in data and "edge_attr" not in data


def test_csv_with_header_weight_and_features_by_name(tmp_path):
    path = put(tmp_path, "e.csv", "src,dst,w,f1,f2\nalice,bob,0.5,1,-2\nbob, carol ,1.5,3,4e-1\n")
    data = read_edge_list(path, source="src", target="dst", weight="w", features=["f1", "f2"])
    assert edges_of(data) == [("alice", "bob"), ("bob", "carol")]
    assert data.node_ids == ["alice", "bob", "carol"]
    assert data.edge_weight.dtype == torch.float32
    assert data.edge_weight.tolist() == [0.5, 1.5]
    assert torch.equal(data.edge_attr, torch.tensor([[1.0, -2.0], [3.0, 0.4]]))


def test_tsv_by_extension_keeps_spaces_inside_ids(tmp_path):
    path = put(tmp_path, "cities.tsv", "New York\tBoston\t2\nBoston\tSan Francisco\t3\n")
    data = read_edge_list(path, weight=2)
    assert edges_of(data) == [("New York", "Boston"), ("Boston", "San Francisco")]
    assert data.edge_weight.tolist() == [2.0, 3.0]


@pytest.mark.parametrize("name, text, delimiter", [
    ("e.txt", "1,2\n2,3\n", None),            # comma found in the first data line
    ("e.dat", "# a, b\n1 2\n2 3\n", None),    # the comma is in a comment only
    ("e.csv.gz", "1,2\n2,3\n", None),         # extension under .gz
    ("e.txt", "1;2\n2;3\n", ";"),             # explicit delimiter
    ("e.csv", "1 2\n2 3\n", " "),             # explicit whitespace beats the extension
])
def test_delimiter_detection(tmp_path, name, text, delimiter):
    path = tmp_path / name
    raw = text.encode()
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    data = read_edge_list(path, delimiter=delimiter)
    assert edges_of(data) == [(1, 2), (2, 3)]


def test_crlf_bom_and_missing_final_newline(tmp_path):
    path = tmp_path / "e.csv"
    path.write_bytes(b"\xef\xbb\xbfsource,target\r\n1,2\r\n2,3")
    assert edges_of(read_edge_list(path)) == [(1, 2), (2, 3)]


def test_empty_files(tmp_path):
    for text in ["", "# only comments\n\n", "source target\n"]:
        data = read_edge_list(put(tmp_path, "e.txt", text), weight=None, features=[])
        assert data.edge_index.shape == (2, 0) and data.num_nodes == 0
        assert data.node_ids.tolist() == [] and data.edge_attr.shape == (0, 0)


def test_bad_delimiter_argument(tmp_path):
    path = put(tmp_path, "e.txt", "1 2\n")
    for bad in ["ab", "", "1", "-", "\n"]:
        with pytest.raises(ValueError, match="delimiter"):
            read_edge_list(path, delimiter=bad)


# --------------------------------------------------------------------------- #
# Header and comments                                                         #
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("text, is_header", [
    ("src dst\n1 2\n", True),                    # names above integer ids
    ("u v w\nalice bob 0.5\n", True),            # names above a numeric weight
    ("source target\nalice bob\n", True),        # the header write_edge_list writes
    ("source target\n", True),
    ("alice bob\ncarol dave\n", False),          # all text: cannot tell, data
    ("alice bob 0.5\ncarol dave 1\n", False),    # first row has a number: data
    ("1 2\n3 4\n", False),
    ("src dst\n", False),                        # a single row is data
])
def test_header_auto_detection(tmp_path, text, is_header):
    path = put(tmp_path, "e.txt", text)
    rows = [r.split() for r in text.splitlines()]
    data = read_edge_list(path)
    assert data.edge_index.size(1) == len(rows) - is_header
    first = edges_of(data)[0] if data.edge_index.size(1) else None
    if not is_header:
        assert [str(v) for v in first] == rows[0][:2]


def test_header_override(tmp_path):
    path = put(tmp_path, "e.txt", "alice bob\ncarol dave\n")
    data = read_edge_list(path, header=True)
    assert edges_of(data) == [("carol", "dave")]
    path = put(tmp_path, "f.txt", "src dst\n1 2\n")
    data = read_edge_list(path, header=False)
    assert edges_of(data) == [("src", "dst"), ("1", "2")]  # ids are text now


def test_header_line_is_counted_and_comments_before_it(tmp_path):
    path = put(tmp_path, "e.csv", "# made by hand\n\nsrc,dst,w\n1,2,0.5\n# mid\n\n3,4,x\n")
    with pytest.raises(ValueError, match=at(path, 7) + ".*non-numeric weight 'x' in column 2"):
        read_edge_list(path, weight="w")


def test_comments(tmp_path):
    path = put(tmp_path, "e.txt", "% header\n1 2\n  % indented\n#3 4\n")
    data = read_edge_list(path, comment="%", header=False)
    assert edges_of(data) == [("1", "2"), ("#3", "4")]
    path = put(tmp_path, "f.txt", "#a #b\n1 2\n")
    assert edges_of(read_edge_list(path, comment=None, header=False)) == [("#a", "#b"), ("1", "2")]
    assert edges_of(read_edge_list(path, comment=None)) == [(1, 2)]  # auto: "#a #b" is a header


def test_no_end_of_line_comments(tmp_path):
    path = put(tmp_path, "e.txt", "1 2\n3 4 # note\n")
    with pytest.raises(ValueError, match=at(path, 2) + ".*expected 2 field.*found 4.*inconsistent"):
        read_edge_list(path)


# --------------------------------------------------------------------------- #
# Columns                                                                     #
# --------------------------------------------------------------------------- #

def test_columns_by_index(tmp_path):
    path = put(tmp_path, "e.txt", "0.5 x 7 8\n1.5 y 8 9\n")
    data = read_edge_list(path, source=3, target=2, weight=0, features=[0, 0])
    assert edges_of(data) == [(8, 7), (9, 8)]
    assert data.edge_weight.tolist() == [0.5, 1.5]
    assert data.edge_attr.tolist() == [[0.5, 0.5], [1.5, 1.5]]


def test_column_errors(tmp_path):
    path = put(tmp_path, "e.csv", "a,b,b\n1,2,3\n")
    with pytest.raises(ValueError, match=at(path, 1) + ".*no column named 'c'"):
        read_edge_list(path, source="a", target="c")
    with pytest.raises(ValueError, match=at(path, 1) + ".*2 columns named 'b'"):
        read_edge_list(path, source="a", target="b")
    with pytest.raises(ValueError, match=at(path, 1) + r".*column 5 \(weight\) is missing"):
        read_edge_list(path, weight=5)
    with pytest.raises(ValueError, match="must be >= 0"):
        read_edge_list(path, source=-1)
    with pytest.raises(TypeError):
        read_edge_list(path, features="b")
    headless = put(tmp_path, "f.csv", "1,2\n")
    with pytest.raises(ValueError,
                       match=re.escape(str(headless)) + ".*selected by name.*no header"):
        read_edge_list(headless, source="a", header=False)


# --------------------------------------------------------------------------- #
# Node ids                                                                    #
# --------------------------------------------------------------------------- #

def test_integer_ids_negative_noncontiguous_huge(tmp_path):
    path = put(tmp_path, "e.txt", "1000000000000 -7\n-7 42\n42 1000000000000\n007 +42\n")
    data = read_edge_list(path)
    assert data.node_ids.dtype == torch.long
    assert data.node_ids.tolist() == [1000000000000, -7, 42, 7]    # first appearance
    assert edges_of(data) == [(10**12, -7), (-7, 42), (42, 10**12), (7, 42)]  # 007 == 7, +42 == 42
    assert data.edge_index.tolist() == [[0, 1, 2, 3], [1, 2, 0, 2]]


def test_ids_beyond_int64_stay_python_ints(tmp_path):
    big = 2**64 + 5
    data = read_edge_list(put(tmp_path, "e.txt", f"{big} 1\n-{big} {big}\n"))
    assert data.node_ids == [big, 1, -big]
    assert data.edge_index.tolist() == [[0, 2], [1, 0]]


def test_mixed_ids_are_all_text(tmp_path):
    data = read_edge_list(put(tmp_path, "e.txt", "007 7\n7 x\n"))
    assert data.node_ids == ["007", "7", "x"]
    assert data.edge_index.tolist() == [[0, 1], [1, 2]]


def test_unicode_ids(tmp_path):
    data = read_edge_list(put(tmp_path, "e.tsv", "Zürich\t東京\n東京\tZürich\n"))
    assert data.node_ids == ["Zürich", "東京"]
    assert data.edge_index.tolist() == [[0, 1], [1, 0]]


# --------------------------------------------------------------------------- #
# Values                                                                      #
# --------------------------------------------------------------------------- #

def test_weight_syntax_and_dtype(tmp_path):
    path = put(tmp_path, "e.csv", "1,2,3\n2,3,-.25\n3,4,1e-3\n4,5,+2.\n5,6,-0\n")
    data = read_edge_list(path, weight=2, dtype=torch.float64)
    assert data.edge_weight.dtype == torch.float64
    assert data.edge_weight.tolist() == [3.0, -0.25, 1e-3, 2.0, -0.0]
    assert math.copysign(1, data.edge_weight[4].item()) == -1


@pytest.mark.parametrize("value, problem", [
    ("abc", "non-numeric weight 'abc'"), ("nan", "non-numeric weight 'nan'"),
    ("inf", "non-numeric weight 'inf'"), ("1,5", "inconsistent column count"),
    ("1e39", "weight '1e39' in column 2 overflows torch.float32"), ("0x10", "non-numeric"),
    ("1_000", "non-numeric"),
])
def test_bad_weight(tmp_path, value, problem):
    path = put(tmp_path, "e.csv", f"# c\n1,2,0.5\n2,3,{value}\n")
    with pytest.raises(ValueError, match=at(path, 3) + ".*" + re.escape(problem)):
        read_edge_list(path, weight=2)


@pytest.mark.parametrize("comment", [False, True], ids=["vectorised", "line by line"])
def test_boolean_words_are_not_numbers(tmp_path, comment):
    """pandas reads a float column of only True / False words as 1 / 0; the
    file is refused, naming the line, whichever parse reads it."""
    text = "0 1 True\n" + ("# c\n" if comment else "") + "1 2 false\n2 3 TRUE\n"
    path = put(tmp_path, "e.txt", text)
    with pytest.raises(ValueError, match=at(path, 1) + ".*non-numeric weight 'True'"):
        read_edge_list(path, weight=2)
    ids = put(tmp_path, "ids.txt", "true false 1.5\nfalse x 2\n")   # ids may be such words
    assert read_edge_list(ids, weight=2).edge_weight.tolist() == [1.5, 2.0]


def test_bad_feature(tmp_path):
    path = put(tmp_path, "e.txt", "1 2 0.5 1\n2 3 0.5 one\n")
    with pytest.raises(ValueError, match=at(path, 2) + ".*non-numeric feature 'one' in column 3"):
        read_edge_list(path, weight=2, features=[3])


def test_row_shape_errors(tmp_path):
    short = put(tmp_path, "s.txt", "1 2 0.5\n\n3 4\n")
    with pytest.raises(ValueError,
                       match=at(short, 3) + r".*column 2 \(weight\) is missing in '3 4'"):
        read_edge_list(short, weight=2)
    long = put(tmp_path, "l.csv", "1,2\n3,4,5\n")
    with pytest.raises(ValueError, match=at(long, 2) + ".*expected 2 field.*found 3.*'3,4,5'"):
        read_edge_list(long)
    unused = put(tmp_path, "u.csv", "1,2,x\n3,4\n")  # the missing field is not even selected
    with pytest.raises(ValueError, match=at(unused, 2) + ".*expected 3 field.*found 2"):
        read_edge_list(unused)
    empty = put(tmp_path, "e.csv", "1,2\n3, \n")
    with pytest.raises(ValueError, match=at(empty, 2) + ".*empty target in column 1"):
        read_edge_list(empty)


def test_invalid_utf8(tmp_path):
    path = tmp_path / "e.txt"
    path.write_bytes(b"1 2\n# ok\n3 \xff\n")
    with pytest.raises(ValueError, match=at(path, 3) + ".*not valid UTF-8"):
        read_edge_list(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_edge_list(tmp_path / "nope.txt")


# --------------------------------------------------------------------------- #
# Undirected                                                                  #
# --------------------------------------------------------------------------- #

def test_undirected_semantics(tmp_path):
    path = put(tmp_path, "e.txt", "1 2 0.5\n2 3 1\n3 2 2\n4 4 3\n1 2 0.5\n")
    data = read_edge_list(path, weight=2, directed=False)
    assert edges_of(data) == [(1, 2), (2, 1),   # reverse added right after
                              (2, 3), (3, 2),   # both listed: kept as listed, nothing added
                              (4, 4),           # self-loop: not doubled
                              (1, 2), (2, 1)]   # a repeated line stays repeated
    assert data.edge_weight.tolist() == [0.5, 0.5, 1, 2, 3, 0.5, 0.5]
    directed = read_edge_list(path, weight=2)
    assert directed.edge_index.size(1) == 5


# --------------------------------------------------------------------------- #
# Node feature and label files                                                #
# --------------------------------------------------------------------------- #

@pytest.fixture
def graph_files(tmp_path):
    edges = put(tmp_path, "edges.txt", "# g\n1 2\n2 3\n")
    return tmp_path, edges


def test_node_features_and_labels(graph_files):
    tmp_path, edges = graph_files
    x = put(tmp_path, "x.csv", "id,a,b\n3,0.3,3\n1,0.1,1\n2,0.2,2\n")
    y = put(tmp_path, "y.tsv", "2\t1\n1\t0\n3\t-1\n")
    data = read_edge_list(edges, node_features=x, node_labels=y)
    assert data.node_ids.tolist() == [1, 2, 3]
    assert torch.equal(data.x, torch.tensor([[0.1, 1], [0.2, 2], [0.3, 3]]))
    assert data.y.dtype == torch.long and data.y.tolist() == [0, 1, -1]
    assert "label_names" not in data


def test_string_labels_and_extra_nodes(graph_files):
    tmp_path, edges = graph_files
    x = put(tmp_path, "x.txt", "1 1\n2 2\n3 3\n9 9\n")
    y = put(tmp_path, "y.csv", "node,label\n3,dog\n9,cat\n1,dog\n2,bird\n")
    data = read_edge_list(edges, node_features=x, node_labels=y)
    assert data.node_ids.tolist() == [1, 2, 3, 9]           # 9 added as an isolated node
    assert data.num_nodes == 4 and data.edge_index.max() == 2
    assert data.x.flatten().tolist() == [1, 2, 3, 9]
    assert data.label_names == ["bird", "cat", "dog"]       # sorted
    assert data.y.tolist() == [2, 0, 2, 1]
    with pytest.raises(ValueError, match=at(x, 4) + ".*node id 9 appears in no edge of "
                       + re.escape(str(edges)) + ".*extra_nodes='error'"):
        read_edge_list(edges, node_features=x, extra_nodes="error")


def test_node_file_string_id_makes_all_ids_text(graph_files):
    tmp_path, edges = graph_files
    y = put(tmp_path, "y.txt", "1 0\n2 0\n3 1\nz 1\n")
    data = read_edge_list(edges, node_labels=y)
    assert data.node_ids == ["1", "2", "3", "z"]
    assert data.y.tolist() == [0, 0, 1, 1]


def test_node_without_feature_row(graph_files):
    tmp_path, edges = graph_files
    x = put(tmp_path, "x.csv", "1,0.1\n3,0.3\n")
    with pytest.raises(ValueError, match=re.escape(f"{x}: node 2 has no feature row; it appears "
                                                   f"on line 2 of {edges}")):
        read_edge_list(edges, node_features=x)
    y = put(tmp_path, "y.csv", "1,a\n2,b\n3,c\n7,d\n")  # node 7: labels only, no feature row
    x2 = put(tmp_path, "x2.csv", "1,0.1\n2,0.2\n3,0.3\n")
    with pytest.raises(ValueError, match=re.escape(f"{x2}: node 7 has no feature row; it appears "
                                                   f"on line 4 of {y}")):
        read_edge_list(edges, node_features=x2, node_labels=y)


def test_node_without_label_row(graph_files):
    tmp_path, edges = graph_files
    y = put(tmp_path, "y.csv", "1,a\n2,b\n")
    with pytest.raises(ValueError, match=re.escape(f"{y}: node 3 has no label row")):
        read_edge_list(edges, node_labels=y)


def test_duplicate_node_rows(graph_files):
    tmp_path, edges = graph_files
    x = put(tmp_path, "x.csv", "id,f\n1,0.1\n2,0.2\n# again\n1,0.3\n3,0.3\n")
    with pytest.raises(ValueError, match=re.escape(f"{x}, lines 2 and 5: duplicate feature rows "
                                                   f"for node 1")):
        read_edge_list(edges, node_features=x)
    y = put(tmp_path, "y.csv", "1,a\n2,b\n3,c\n+2,d\n")  # +2 is node 2
    with pytest.raises(ValueError, match=re.escape(f"{y}, lines 2 and 4: duplicate label rows")):
        read_edge_list(edges, node_labels=y)


def test_node_file_content_errors(graph_files):
    tmp_path, edges = graph_files
    x = put(tmp_path, "x.csv", "1,0.1,1\n2,zero,2\n3,0.3,3\n")
    with pytest.raises(ValueError,
                       match=at(x, 2) + ".*non-numeric node feature 'zero' in column 1"):
        read_edge_list(edges, node_features=x)
    x = put(tmp_path, "x1.csv", "1,0.1,1\n2,0.2\n3,0.3,3\n")
    with pytest.raises(ValueError, match=at(x, 2) + r".*column 2 \(node feature\) is missing"):
        read_edge_list(edges, node_features=x)
    x = put(tmp_path, "x2.csv", "1\n2\n3\n")
    with pytest.raises(ValueError, match=at(x, 1) + ".*at least one feature column"):
        read_edge_list(edges, node_features=x)
    y = put(tmp_path, "y.csv", "1,a\n,b\n3,c\n")
    with pytest.raises(ValueError, match=at(y, 2) + ".*empty node id in column 0"):
        read_edge_list(edges, node_labels=y)
    y = put(tmp_path, "y2.csv", "1,a\n2,\n3,c\n")
    with pytest.raises(ValueError, match=at(y, 2) + ".*empty label in column 1"):
        read_edge_list(edges, node_labels=y)
    y = put(tmp_path, "y3.csv", "1,a,x\n2,b,x\n3,c,x\n")
    with pytest.raises(ValueError, match=at(y, 1) + ".*2 columns"):
        read_edge_list(edges, node_labels=y)
    y = put(tmp_path, "y4.csv", f"1,0\n2,{2**70}\n3,1\n")
    with pytest.raises(ValueError, match=at(y, 2) + ".*does not fit in int64"):
        read_edge_list(edges, node_labels=y)


def test_node_header_auto_and_override(tmp_path):
    edges = put(tmp_path, "e.txt", "1 2\n2 3\n")
    y = put(tmp_path, "y.csv", "node,label\n1,a\n2,b\n3,c\n")  # "1" below "node": a header
    assert read_edge_list(edges, node_labels=y).y.tolist() == [0, 1, 2]
    edges = put(tmp_path, "s.txt", "x y\ny z\n")
    y = put(tmp_path, "z.csv", "node,label\nx,a\ny,b\nz,c\n")  # all text: read as data
    with pytest.raises(ValueError, match=at(y, 1) + ".*node id 'node' appears in no edge"):
        read_edge_list(edges, node_labels=y, extra_nodes="error")
    data = read_edge_list(edges, node_labels=y, node_header=True)
    assert data.label_names == ["a", "b", "c"] and data.y.tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- #
# Writing and the round trip                                                  #
# --------------------------------------------------------------------------- #

def make_source_file(tmp_path: Path, suffix: str, ids: str, weight: bool, features: int) -> Path:
    """A hand-written edge file with awkward ids and full-precision floats."""
    rng = np.random.default_rng(1)
    pool = ([-(10**15), 0, 7, 123456789012, -3, 99, 5] if ids == "int"
            else ["alice", "b-ob", "Zoë", "x.y", "42", "n_5", "東京"])
    sep = {".csv": ",", ".tsv": "\t", ".txt": " "}[suffix]
    names = ["source", "target"] + ["weight"] * weight + [f"f{k}" for k in range(features)]
    rows = [sep.join(names)]
    for _ in range(25):
        a, b = rng.choice(len(pool), 2)
        k = weight + features
        vals = rng.standard_normal(k) * 10.0 ** rng.integers(-8, 8, k)
        rows.append(sep.join([str(pool[a]), str(pool[b])] + [repr(float(v)) for v in vals]))
    return put(tmp_path, "orig" + suffix, "\n".join(rows) + "\n")


def assert_same_graph(a, b):
    assert torch.equal(a.edge_index, b.edge_index)
    if isinstance(a.node_ids, torch.Tensor):
        assert torch.equal(a.node_ids, b.node_ids)
    else:
        assert a.node_ids == b.node_ids
    assert a.num_nodes == b.num_nodes
    for key in ("edge_weight", "edge_attr"):
        va, vb = getattr(a, key, None), getattr(b, key, None)
        assert (va is None) == (vb is None)
        if va is not None:
            assert va.dtype == vb.dtype and torch.equal(va, vb)
            assert torch.equal(torch.signbit(va), torch.signbit(vb))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt"])
@pytest.mark.parametrize("ids", ["int", "str"])
@pytest.mark.parametrize("weight, features", [(False, 0), (True, 0), (False, 2), (True, 3)])
def test_round_trip(tmp_path, suffix, ids, weight, features):
    orig = make_source_file(tmp_path, suffix, ids, weight, features)
    kwargs = dict(weight="weight" if weight else None,
                  features=[f"f{k}" for k in range(features)] if features else None)
    first = read_edge_list(orig, **kwargs)
    assert isinstance(first.node_ids, torch.Tensor) == (ids == "int")
    out = tmp_path / ("out" + suffix)
    write_edge_list(first, out)
    again = read_edge_list(out, weight=2 if weight else None,
                           features=list(range(2 + weight, 2 + weight + features)) or None)
    assert_same_graph(first, again)
    write_edge_list(first, tmp_path / ("bare" + suffix), header=False)
    assert_same_graph(first, read_edge_list(tmp_path / ("bare" + suffix), header=False,
                                            weight=2 if weight else None,
                                            features=list(range(2 + weight, 2 + weight + features))
                                            or None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_floats_round_trip_exactly(tmp_path, dtype):
    rng = np.random.default_rng(0)
    values = rng.standard_normal(2000) * 10.0 ** rng.integers(-40, 38, 2000)
    values = torch.from_numpy(values).to(dtype)
    values[:4] = torch.tensor([0.1, -0.0, 3.4028234663852886e38, 1e-45]).to(dtype)
    edge_index = torch.stack([torch.arange(2000), (torch.arange(2000) + 1) % 2000])
    data = Data(edge_index=edge_index, num_nodes=2000, edge_weight=values,
                          node_ids=torch.arange(2000) * 3 - 7)
    path = tmp_path / "w.txt.gz"
    write_edge_list(data, path)
    back = read_edge_list(path, weight="weight", dtype=dtype)
    assert torch.equal(back.edge_weight, values)
    assert torch.equal(torch.signbit(back.edge_weight), torch.signbit(values))
    assert torch.equal(back.node_ids, data.node_ids)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.bool])
@pytest.mark.parametrize("columns", [1, 3])
def test_half_precision_and_bool_edge_features_round_trip(tmp_path, dtype, columns):
    """Half-precision features are written as the float64 repr of each value
    (one per column), bools as 1 / 0: the file reads back to the same values."""
    torch.manual_seed(0)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    attr = (torch.randn(3, columns) > 0).to(dtype) if dtype == torch.bool \
        else (torch.randn(3, columns) * 100).to(dtype)
    data = Data(edge_index=edge_index, num_nodes=3, edge_attr=attr)
    write_edge_list(data, tmp_path / "h.csv")
    names = [f"feature_{c}" for c in range(columns)]
    back = read_edge_list(tmp_path / "h.csv", features=names, dtype=torch.float64)
    assert torch.equal(back.edge_attr, attr.double())


def test_a_first_edge_that_reads_as_the_header_needs_the_header(tmp_path):
    """Without a header line, a first edge between nodes named 'source' and
    'target' would be read back as the header (and the edge lost): refused;
    with the header (the default) it round-trips."""
    data = Data(edge_index=torch.tensor([[0, 1], [1, 2]]), num_nodes=3,
                node_ids=["source", "target", "x"])
    with pytest.raises(ValueError, match="'source' -> 'target', would be read back as the "
                                         "header line"):
        write_edge_list(data, tmp_path / "h.tsv", header=False)
    write_edge_list(data, tmp_path / "h.tsv")
    back = read_edge_list(tmp_path / "h.tsv")
    assert back.edge_index.size(1) == 2 and list(back.node_ids) == ["source", "target", "x"]


def test_write_format(tmp_path):
    data = read_edge_list(put(tmp_path, "e.txt", "a b 0.1\nb c 2\n"), weight=2)
    write_edge_list(data, tmp_path / "o.csv")
    assert (tmp_path / "o.csv").read_text() == "source,target,weight\na,b,0.1\nb,c,2.0\n"
    write_edge_list(data, tmp_path / "o.tsv", weight=False, header=False)
    assert (tmp_path / "o.tsv").read_text() == "a\tb\nb\tc\n"
    bare = Data(edge_index=torch.tensor([[0, 2], [1, 0]]), num_nodes=3)
    write_edge_list(bare, tmp_path / "o.txt")  # no node_ids: node k is written as k
    assert (tmp_path / "o.txt").read_text() == "source target\n0 1\n2 0\n"


def test_undirected_round_trip(tmp_path):
    path = put(tmp_path, "e.txt", "1 2 0.5\n2 3 1\n3 2 2\n4 4 3\n1 2 0.5\n5 1 1\n")
    data = read_edge_list(path, weight=2, directed=False)
    write_edge_list(data, tmp_path / "u.txt", directed=False, header=False)
    written = "1 2 0.5\n2 3 1.0\n3 2 2.0\n4 4 3.0\n1 2 0.5\n5 1 1.0\n"
    assert (tmp_path / "u.txt").read_text() == written
    assert_same_graph(data, read_edge_list(tmp_path / "u.txt", weight=2, directed=False))


def test_write_errors(tmp_path):
    isolated = Data(edge_index=torch.tensor([[0], [1]]), num_nodes=3,
                              node_ids=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"node 2 \(id 'c'\) has no edge"):
        write_edge_list(isolated, tmp_path / "o.txt")
    write_edge_list(isolated, tmp_path / "o.txt", allow_isolated=True)
    assert (tmp_path / "o.txt").read_text() == "source target\na b\n"
    for bad in ["x y", "", " x", "#x", "x\ny"]:
        data = Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2, node_ids=["a", bad])
        with pytest.raises(ValueError, match=re.escape("data.node_ids[1]")):
            write_edge_list(data, tmp_path / "o.txt")
    same = Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2, node_ids=["7", "007"])
    with pytest.raises(ValueError, match="same node"):
        write_edge_list(same, tmp_path / "o.txt")
    nan = Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2,
                         edge_weight=torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="edge_weight of edge 0 is not finite"):
        write_edge_list(nan, tmp_path / "o.txt")
    with pytest.raises(ValueError, match="edge_attr is missing"):
        write_edge_list(nan, tmp_path / "o.txt", weight=False, features=True)


# --------------------------------------------------------------------------- #
# The vectorised parser and the careful pass agree                            #
# --------------------------------------------------------------------------- #

def test_clean_files_take_the_fast_path(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("careful pass used on a clean file")

    monkeypatch.setattr(careful, "parse_careful", refuse)
    path = put(tmp_path, "e.csv", "# c\nsource,target,w\r\n1,2,0.5\r\n2,-3,1e-3\r\n")
    assert edges_of(read_edge_list(path, weight="w")) == [(1, 2), (2, -3)]
    put(tmp_path, "x.txt", "1 0.1 0.2\n2 0.3 0.4\n-3 0.5 0.6\n")
    put(tmp_path, "y.txt", "1 0\n2 1\n-3 1\n")
    data = read_edge_list(path, node_features=tmp_path / "x.txt", node_labels=tmp_path / "y.txt")
    assert data.y.tolist() == [0, 1, 1]
    path = put(tmp_path, "s.tsv", "Zoë\tBob Ross\t1\nBob Ross\t42\t2\n")  # string ids
    put(tmp_path, "ys.tsv", "42\tdog\nZoë\tcat\nBob Ross\tcat\n")
    data = read_edge_list(path, weight=2, node_labels=tmp_path / "ys.tsv")
    assert data.node_ids == ["Zoë", "Bob Ross", "42"] and data.edge_weight.tolist() == [1, 2]
    assert data.label_names == ["cat", "dog"] and data.y.tolist() == [0, 0, 1]


@pytest.mark.parametrize("text, delimiter, node_ids", [
    ("# c\n\ufeff7 8\n9 10\n", None, ["\ufeff7", "8", "9", "10"]),  # pandas drops this BOM
    ("\x0b7 8\n9 10\n", None, ["\x0b7", "8", "9", "10"]),  # pandas skips \v \f by numbers
    ("7,8\x0c\n9,10\n", ",", ["7", "8\x0c", "9", "10"]),
    ("1 2\r3\n", None, ["1", "2\r3"]),                       # a lone CR ends no line here
    ("1\x002 3\n", None, ["1\x002", "3"]),                   # nor does NUL
    ("a ,b\nc,d\n", ",", ["a", "b", "c", "d"]),              # text fields are stripped
    ("1.0 2\n3 4\n", None, ["1.0", "2", "3", "4"]),          # pandas would read 1.0 as 1
    (f"{2**64} 1\n1 3\n", None, [2**64, 1, 3]),              # beyond int64
])
def test_fast_path_declines_what_pandas_reads_differently(tmp_path, text, delimiter, node_ids):
    path = tmp_path / "e.txt"
    path.write_bytes(text.encode("utf-8"))
    data = read_edge_list(path, delimiter=delimiter, header=False)
    assert data.node_ids == node_ids
    with careful_only():
        assert_same_graph(data, read_edge_list(path, delimiter=delimiter, header=False))


INT_TOKENS = st.one_of(st.integers(-2**65, 2**65).map(str),
                       st.sampled_from(["+7", "007", "-0", "1.0", "7 ", " 7", "1e3", "0x1", "1_0",
                                        "٣", "", "a", "9223372036854775808", "True", "NA"]))
NUM_TOKENS = st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr),
                       st.integers(-10**30, 10**30).map(str),
                       st.sampled_from([".5", "5.", "-0", "+1", "1E5", "1e39", "1e400", "nan",
                                        "inf", "-Infinity", "1_0", "0x1", "", "1.5d3", " 2 "]))


@st.composite
def mostly_clean_files(draw):
    sep = draw(st.sampled_from([",", "\t", " "]))
    suffix = draw(st.sampled_from([".csv", ".tsv", ".txt"]))
    good = st.integers(-50, 50).map(str)
    # half the files draw only valid tokens, so that both outcomes stay
    # common whatever the seed (a bad token in any row makes a file an error)
    dirty = draw(st.booleans())
    id_tokens = st.one_of(good, good, INT_TOKENS) if dirty else good
    num_tokens = st.one_of(st.just("0.25"), NUM_TOKENS) if dirty else st.just("0.25")
    rows = []
    for _ in range(draw(st.integers(1, 12))):
        ids = [draw(id_tokens) for _ in range(2)]
        nums = [draw(num_tokens) for _ in range(2)]
        rows.append(sep.join(ids + nums))
    if draw(st.booleans()):
        rows.insert(draw(st.integers(0, len(rows))), draw(st.sampled_from(["", "# c", "  "])))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return suffix, sep, end.join(rows) + draw(st.sampled_from(["", end]))


def test_fast_path_agrees_with_careful_pass():
    seen = Counter()

    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(mostly_clean_files(), st.sampled_from([torch.float32, torch.float64]))
    def check(file, dtype):
        suffix, sep, text = file
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ("e" + suffix)
            path.write_bytes(text.encode("utf-8"))
            kwargs = dict(delimiter=sep, header=False, weight=2, features=[3], dtype=dtype)
            outcomes = []
            for careful_path in (False, True):
                with careful_only() if careful_path else contextlib.nullcontext():
                    try:
                        outcomes.append(read_edge_list(path, **kwargs))
                    except ValueError as err:
                        outcomes.append(str(err))
        fast, slow = outcomes
        seen["ok" if not isinstance(fast, str) else "error"] += 1
        if isinstance(fast, str) or isinstance(slow, str):
            assert fast == slow
        else:
            assert_same_graph(fast, slow)

    check()
    assert seen["ok"] >= 20 and seen["error"] >= 10, seen


# --------------------------------------------------------------------------- #
# Fuzz: malformed input is a ValueError, never a crash or a shortened graph   #
# --------------------------------------------------------------------------- #

TOKEN = st.one_of(
    st.integers(-10**25, 10**25).map(str),
    st.floats().map(repr),
    st.sampled_from(["", " ", ",", "\t", "#", "\r", "\x00", "nan", "1e999", "é", "\u2028",
                     "\x85", "\ufeff", '"a,b"', "NA", "-", "+", "."]),
    st.text(st.characters(blacklist_characters="\n"), max_size=6),
)
SEPARATOR = st.sampled_from([",", "\t", " ", "  ", ",,", " \t"])  # extra delimiters too
LINE = st.one_of(
    st.tuples(st.lists(TOKEN, max_size=6), SEPARATOR).map(lambda ts: ts[1].join(ts[0])),
    st.sampled_from(["", "   ", "# comment", "  # indented comment", "1 2", "1,2", "a\tb"]),
    st.integers(1, 3000).map(lambda n: " ".join(["1"] * n)),           # very long line
    st.integers(1, 20000).map(lambda n: "x" * n + " y"),
)


def data_lines(text: str) -> int:
    """Lines that are neither blank nor comments (the module's documented rule)."""
    count = 0
    for line in text.split("\n"):
        line = line.removesuffix("\r").strip(" \t")
        count += bool(line) and not line.startswith("#")
    return count


@settings(max_examples=100, deadline=3000, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, max_size=8), st.sampled_from([".csv", ".tsv", ".txt"]),
       st.sampled_from([None, 2]), st.binary(max_size=2))
def test_fuzz_valid_graph_or_value_error(lines, suffix, weight, junk):
    text = "\n".join(lines)
    # lone surrogates and the junk bytes make invalid UTF-8, which must be a ValueError too
    raw = text.encode("utf-8", "surrogatepass") + (b"\n" + junk if junk else b"")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("fuzz" + suffix)
        path.write_bytes(raw)
        try:
            data = read_edge_list(path, header=False, weight=weight)
        except ValueError as err:
            assert str(path) in str(err) or "delimiter" in str(err)
            return
    expected = data_lines(raw.decode("utf-8").removeprefix("\ufeff"))
    assert data.edge_index.dtype == torch.long and data.edge_index.shape == (2, expected)
    ids = data.node_ids
    assert len(ids) == data.num_nodes
    if expected:
        assert 0 <= int(data.edge_index.min()) and int(data.edge_index.max()) < data.num_nodes
    if weight is not None:
        assert data.edge_weight.shape == (expected,)
        assert bool(torch.isfinite(data.edge_weight).all())
