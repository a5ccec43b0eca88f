"""Numeric node labels (regression targets): ``label_type="value"`` in
``read_edge_list`` and in the streaming ``convert_edge_list``, which read the
same numbers and refuse the same bad ones, naming file, line and value."""
import numpy as np
import pytest
import torch

from graphformer.data.edge_list import convert_edge_list, read_edge_list
from graphformer.data.graph_store import load_graph


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    src, dst = rng.integers(0, n, 300), rng.integers(0, n, 300)
    (tmp_path / "edges.txt").write_text("".join(f"n{a} n{b}\n" for a, b in zip(src, dst)))
    values = rng.normal(size=n) * 1e3
    # a header, exponents, signs and an isolated node (n_extra) in the label file
    present = sorted({f"n{v}" for v in np.concatenate([src, dst])})
    lines = [f"{node},{float(values[k])!r}" for k, node in enumerate(present)] + ["n_extra,-2.5e-3"]
    (tmp_path / "y.csv").write_text("node,value\n" + "\n".join(lines) + "\n")
    return tmp_path


def test_files_and_the_converted_graph_hold_the_same_values(files):
    data = read_edge_list(files / "edges.txt", node_labels=files / "y.csv", label_type="value",
                          dtype=torch.float64)
    assert data.y.dtype == torch.float64 and data.y.shape == (data.num_nodes,)
    written = dict(line.split(",") for line in (files / "y.csv").read_text().split("\n")[1:-1])
    assert {data.node_ids[k]: float(v) for k, v in enumerate(data.y.tolist())} == \
        {k: float(v) for k, v in written.items()}
    assert data.node_ids[-1] == "n_extra" and data.y[-1] == -2.5e-3
    assert not hasattr(data, "label_names")
    graph = convert_edge_list(files / "edges.txt", files / "g", node_labels=files / "y.csv",
                              label_type="value", chunk_rows=7, dtype=torch.float64)
    assert graph.label_type == "value" and graph.y_array.dtype == np.float64
    assert torch.equal(torch.from_numpy(np.array(graph.y_array)), data.y)
    assert load_graph(files / "g").label_type == "value"
    classes = convert_edge_list(files / "edges.txt", files / "c", node_labels=files / "y.csv")
    assert classes.label_type == "class" and classes.y_array.dtype == np.int64
    assert convert_edge_list(files / "edges.txt", files / "none").label_type is None


@pytest.mark.parametrize("bad,shown", [("abc", "non-numeric label 'abc'"),
                                       ("nan", "non-numeric label 'nan'"),
                                       ("1e999", "label '1e999' in column 1 overflows torch.float32"),
                                       ("", "empty label")])
def test_a_bad_value_is_named_by_file_and_line(files, bad, shown):
    lines = (files / "y.csv").read_text().split("\n")
    lines[5] = lines[5].split(",")[0] + "," + bad
    (files / "y.csv").write_text("\n".join(lines))
    for read in (lambda: read_edge_list(files / "edges.txt", node_labels=files / "y.csv",
                                        label_type="value"),
                 lambda: convert_edge_list(files / "edges.txt", files / "g",
                                           node_labels=files / "y.csv", label_type="value",
                                           chunk_rows=3)):
        with pytest.raises(ValueError, match=rf"y\.csv, line 6: {shown}"):
            read()
    assert not (files / "g").exists()


def test_the_label_type_is_checked(files):
    for read in (lambda: read_edge_list(files / "edges.txt", node_labels=files / "y.csv",
                                        label_type="float"),
                 lambda: convert_edge_list(files / "edges.txt", files / "g",
                                           node_labels=files / "y.csv", label_type="float")):
        with pytest.raises(ValueError, match="label_type must be 'class' or 'value', got 'float'"):
            read()
