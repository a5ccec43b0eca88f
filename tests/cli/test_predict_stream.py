"""``graphformer predict`` streamed: chunks, worker processes, invalid rows,
the partial output and ``--resume`` (graphformer.train.screen,
graphformer.datasets.stream). Tiny models and files: each command runs in
well under a second."""
import csv
import io
import itertools
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import graphformer.cli.predict as predict_cli
import graphformer.train.screen as screen_module
from graphformer.data import from_smiles
from graphformer.data.encodings import encodings
from graphformer.datasets.molecules import bundled_dir, read_csv
from graphformer.datasets.stream import (AHEAD_PER_WORKER, CSVChunks, Featuriser, featurise,
                                         pieces)
from graphformer.errors import DataError
from graphformer.train.checkpoint import load_run
from graphformer.train.screen import (Identity, PartialOutput, Progress, CSVSink,
                                      partial_folder)
from tests.cli.test_bad_input import assert_error, cli

SMILES = list(pd.read_csv(bundled_dir() / "ESOL.csv")["smiles"].head(40))
TINY = ["--epochs", "1", "--hidden", "8", "--layers", "1", "--heads", "2", "--rwse-steps", "4",
        "--threads", "1", "--batch-size", "8", "--quiet", "--split", "random"]
FAST = ["--threads", "1", "--quiet"]


def write_input(path, smiles, blank_after=()):
    """A SMILES CSV with a name column; a blank line after the rows in
    ``blank_after`` (so rows are not line numbers minus one... plus one)."""
    lines = ["smiles,name"]
    for k, s in enumerate(smiles):
        lines.append(f"{s},mol{k}")
        if k in blank_after:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("stream")


def train_tiny(work, name, *extra):
    y = pd.read_csv(bundled_dir() / "ESOL.csv")["measured log solubility in mols per litre"]
    data = work / f"{name}.csv"
    pd.DataFrame({"smiles": SMILES, "y": y.head(len(SMILES))}).to_csv(data, index=False)
    code, _, err = cli("train", "--dataset", data, "--target-columns", "y", "--root",
                       work / "cache", "--run-dir", work / name, *TINY, *extra)
    assert code == 0, err
    return work / name / "best.pt"


@pytest.fixture(scope="module")
def checkpoint(work):
    """One model with RDKit descriptors (the default molecule features)."""
    return train_tiny(work, "single", "--ensemble", "1")


@pytest.fixture(scope="module")
def ensemble(work):
    # graph transformers alone: these tests read the members' own vectors and
    # means (test_kernel_member.py streams a checkpoint with the kernel member)
    return train_tiny(work, "ensemble", "--ensemble", "2", "--molecule-features", "none",
                      "--kernel-member", "none")


@pytest.fixture(scope="module")
def source(work):
    """40 molecules, blank lines after rows 3 and 17 (rows then skip 5 and 20)."""
    return write_input(work / "in.csv", SMILES, blank_after=(3, 17))


def in_memory(ckpt, smiles):
    """What predict computed before streaming: every graph built, one pass
    of the model in target units."""
    state, cfg, model = load_run(ckpt)
    sets = cfg.data.molecule_features if model.mol_features else []
    transform = encodings(cfg.model.rwse_steps, cfg.model.lap_pe)
    graphs = [transform(from_smiles(s, molecule_feature_sets=sets)) for s in smiles]
    from torch_geometric.loader import DataLoader
    from graphformer.train import predict
    return predict(model, DataLoader(graphs, batch_size=128), state["y_mean"], state["y_std"],
                   torch.device("cpu"))[:, 0].numpy()


def rows_of(path):
    return read_csv(path).index.tolist()


# --------------------------------------------------------------------------- results

def test_chunks_batches_and_workers_give_the_in_memory_predictions(checkpoint, source, tmp_path):
    outs = {}
    for flags in (["--chunk-size", "10000"], ["--chunk-size", "7", "--batch-size", "3"],
                  ["--chunk-size", "7", "--batch-size", "3", "--workers", "2"]):
        out = tmp_path / f"p{len(outs)}.csv"
        code, stdout, err = cli("predict", checkpoint, source, "-o", out, *FAST, *flags)
        assert code == 0, err
        assert stdout.strip() == f"wrote 40 predictions to {out}"
        outs[tuple(flags)] = out
    first, small, workers = (pd.read_csv(p) for p in outs.values())
    assert first["row"].tolist() == rows_of(source) == [*range(1, 5), *range(6, 20),
                                                       *range(21, 43)]
    assert first["smiles"].tolist() == SMILES and list(first.columns) == ["row", "smiles", "y"]
    np.testing.assert_allclose(first["y"].to_numpy(), in_memory(checkpoint, SMILES),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(small["y"].to_numpy(), first["y"].to_numpy(), rtol=1e-5,
                               atol=1e-5)
    # worker processes build the same graphs in the same order: the same bytes
    paths = list(outs.values())
    assert paths[1].read_bytes() == paths[2].read_bytes()
    assert not list(tmp_path.glob(".*"))   # no partial output, no temporary left


def test_the_model_process_gives_freed_memory_back_after_every_chunk(checkpoint, source,
                                                                     tmp_path, monkeypatch):
    # glibc's heap otherwise creeps up with the molecules done (909 MB at a
    # million SMILES against 683 MB at 20,000; docs/screening.md)
    calls = []
    monkeypatch.setattr(screen_module, "release_free_memory", lambda: calls.append(1) or True)
    code, _, err = cli("predict", checkpoint, source, "-o", tmp_path / "p.csv", *FAST,
                       "--chunk-size", "7")
    assert code == 0, err
    assert len(calls) == 6   # 40 molecules (42 rows): 6 chunks of up to 7 rows


def test_an_ensemble_predicts_its_members_mean(ensemble, source, tmp_path):
    out = tmp_path / "p.csv"
    assert cli("predict", ensemble, source, "-o", out, *FAST, "--chunk-size", "16")[0] == 0
    state, cfg, model = load_run(ensemble)
    assert cfg.train.ensemble == 2
    transform = encodings(cfg.model.rwse_steps, cfg.model.lap_pe)
    from torch_geometric.data import Batch
    batch = Batch.from_data_list([transform(from_smiles(s)) for s in SMILES])
    with torch.no_grad():
        members = torch.stack([m(batch)[:, 0] for m in model.members])
    expected = (members * state["y_std"] + state["y_mean"]).mean(0)
    np.testing.assert_allclose(pd.read_csv(out)["y"].to_numpy(), expected.numpy(), rtol=1e-5,
                               atol=1e-5)
    assert not torch.allclose(members[0], members[1])   # two models, not one twice


# --------------------------------------------------------------------------- invalid rows

def test_explain_names_a_member_of_an_ensemble(ensemble, tmp_path):
    """Each member has its own attention: explain asks for one member's
    checkpoint, counting the graph transformers."""
    assert_error(cli("explain", ensemble, "--smiles", "CCO", "-o", tmp_path / "a.png"), 2,
                 "is an ensemble of 2 graph transformers",
                 str(ensemble.parent / "member-0" / "best.pt"))


def test_an_invalid_chunk_fails_naming_its_rows_and_skip_invalid_resume_continues(
        checkpoint, tmp_path):
    smiles = SMILES[:12]
    smiles[5], smiles[9] = "C1CC", "xyz"    # rows 6 and 10: chunk 2 of 4-row chunks
    src = write_input(tmp_path / "in.csv", smiles)
    out = tmp_path / "out.csv"
    flags = ["--chunk-size", "4", "--batch-size", "2", *FAST]
    result = cli("predict", checkpoint, src, "-o", out, *flags)
    assert_error(result, 1, "invalid SMILES in", "row(s) 6", "in.csv, row 6", "'C1CC'",
                 "--skip-invalid", "the 4 rows before them are kept")
    assert "row 10" not in result[2]            # the first invalid chunk ends the run
    assert not out.exists()
    # the uninterrupted run with --skip-invalid, for comparison
    whole = tmp_path / "whole.csv"
    code, stdout, err = cli("predict", checkpoint, src, "-o", whole, "--skip-invalid", *flags)
    assert code == 0 and "(2 invalid rows skipped)" in stdout, err
    assert [line for line in err.splitlines() if line.startswith("skipped:")] == [
        f"skipped: cannot parse SMILES 'C1CC' ({src}, row 6)",
        f"skipped: cannot parse SMILES 'xyz' ({src}, row 10)"]
    frame = pd.read_csv(whole)
    assert frame["row"].tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 11, 12]   # never shifted
    assert frame["smiles"].tolist() == [s for k, s in enumerate(smiles) if k not in (5, 9)]
    # the failed run's first chunk is kept; --skip-invalid --resume writes the rest once
    code, _, err = cli("predict", checkpoint, src, "-o", out, "--skip-invalid", "--resume",
                       *flags)
    assert code == 0, err
    assert out.read_bytes() == whole.read_bytes()
    assert not partial_folder(out).exists()


def test_no_valid_row_and_no_row_are_data_errors_leaving_nothing(checkpoint, tmp_path):
    out = tmp_path / "o.csv"
    src = write_input(tmp_path / "bad.csv", ["C1CC", "xyz"])
    assert_error(cli("predict", checkpoint, src, "-o", out, "--skip-invalid", *FAST), 1,
                 "no valid SMILES in", "bad.csv")
    (tmp_path / "empty.csv").write_text("smiles,name\n\n")
    assert_error(cli("predict", checkpoint, tmp_path / "empty.csv", "-o", out, *FAST), 1,
                 "empty.csv has a header but no rows")
    (tmp_path / "nothing.csv").write_text("")
    assert_error(cli("predict", checkpoint, tmp_path / "nothing.csv", "-o", out, *FAST), 1,
                 "nothing.csv is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "empty.csv", "nothing.csv"]


@pytest.mark.parametrize("content, code, names", [
    (b"smiles,name\nCCO,a\nCCN,b\nCCC,b,extra\nCCO,c\n", 1,
     ["in.csv, row 3", "3 fields", "2 columns"]),
    (b"smiles,name\nCCO,a\nCCN,b\nCC\xff,b\nCCO,c\n", 1,
     ["in.csv is not a UTF-8 text file", "line 4"]),
    (b"name\nCCO\n", 2, ["in.csv: no column 'smiles'"]),
    # a quote never closed: the field would swallow every row after it
    (b"smiles,name\nCCO,a\nCCN,b\n\"CCC,b\nCCO,c\n", 1,
     ["in.csv, line 4 (to line 5): not a valid CSV record", "double quote"]),
])
def test_a_bad_record_is_one_line_naming_file_and_row(checkpoint, tmp_path, content, code,
                                                      names):
    src = tmp_path / "in.csv"
    src.write_bytes(content)
    out = tmp_path / "o.csv"
    result = cli("predict", checkpoint, src, "-o", out, "--chunk-size", "2", *FAST)
    assert_error(result, code, *names)
    assert [line for line in result[2].splitlines() if line.strip()][-1].startswith(
        "graphformer: error:")
    # a data error after a complete chunk keeps it, and says so (before the error line)
    assert not out.exists() and partial_folder(out).exists() == (code == 1)
    assert ("note: the first 2 rows are kept" in result[2]) == (code == 1)


# --------------------------------------------------------------------------- crashes and --resume

class Crash(Exception):
    pass


def crash_in_chunk(monkeypatch, module, name, after_calls):
    """Make ``module.name`` (a batch's output columns) raise after
    ``after_calls`` calls: a run killed in the middle of a chunk."""
    real = getattr(module, name)
    calls = itertools.count()

    def crashing(*args, **kwargs):
        if next(calls) >= after_calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, crashing)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_interrupted_run_resumes_to_the_same_bytes(checkpoint, source, tmp_path,
                                                      monkeypatch, workers):
    flags = ["--chunk-size", "8", "--batch-size", "3", "--workers", workers, *FAST]
    whole = tmp_path / "whole.csv"
    assert cli("predict", checkpoint, source, "-o", whole, *flags)[0] == 0
    out = tmp_path / "out.csv"
    with monkeypatch.context() as m:
        # chunk 1 is 3 + 3 + 2 molecules: the 9th batch is in chunk 3, after its first one
        crash_in_chunk(m, predict_cli, "prediction_columns", 7)
        code, _, err = cli("predict", checkpoint, source, "-o", out, *flags)
    assert code == 130 and "interrupted" in err and "--resume" in err, err
    assert not out.exists()
    state = json.loads((partial_folder(out) / "state.json").read_text())
    assert state["done"]["chunks"] == 2 and state["done"]["molecules"] == 16
    data = partial_folder(out) / "data.csv"
    assert data.stat().st_size > state["sink"]["sizes"]["data.csv"]   # a torn chunk 3
    code, stdout, err = cli("predict", checkpoint, source, "-o", out, "--resume", *flags)
    assert code == 0, err
    assert stdout.strip() == f"wrote 40 predictions to {out}"
    assert out.read_bytes() == whole.read_bytes()
    assert not partial_folder(out).exists()


def test_resume_refuses_another_checkpoint_input_or_flag(checkpoint, ensemble, source,
                                                         tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    src.write_bytes(source.read_bytes())
    out = tmp_path / "out.csv"
    flags = ["--chunk-size", "8", *FAST]
    with monkeypatch.context() as m:
        crash_in_chunk(m, predict_cli, "prediction_columns", 2)
        assert cli("predict", checkpoint, src, "-o", out, *flags)[0] == 130
    assert_error(cli("predict", checkpoint, src, "-o", out, "--resume", "--chunk-size", "9",
                     *FAST), 2, "--chunk-size 9 differs", "--chunk-size 8")
    assert_error(cli("predict", checkpoint, src, "-o", out, "--resume", "--batch-size", "7",
                     *flags), 2, "--batch-size 7 differs")
    assert_error(cli("predict", ensemble, src, "-o", out, "--resume", *flags), 1,
                 "the checkpoint changed")
    assert_error(cli("fingerprint", checkpoint, src, "-o", out, "--resume", *flags), 2,
                 "'graphformer predict', not 'fingerprint'")
    os.utime(src, (1, 1))                             # touched: still the same input
    with open(src, "a") as fh:
        fh.write("CCO,late\n")                        # appended to: another input
    assert_error(cli("predict", checkpoint, src, "-o", out, "--resume", *flags), 1,
                 "the input changed", "size")
    assert partial_folder(out).is_dir()               # refused: nothing touched
    # without --resume the partial output is replaced, and said so
    code, _, err = cli("predict", checkpoint, src, "-o", out, *flags)
    assert code == 0 and "discarding the partial output of an earlier run" in err, err
    assert len(pd.read_csv(out)) == 41


def test_a_damaged_state_is_refused_by_resume_and_replaced_without(checkpoint, source,
                                                                   tmp_path):
    out = tmp_path / "out.csv"
    partial_folder(out).mkdir()
    (partial_folder(out) / "state.json").write_text('{"format": "graphformer-partial-out')
    assert_error(cli("predict", checkpoint, source, "-o", out, "--resume", *FAST), 1,
                 "state.json is damaged", "without --resume")
    assert cli("predict", checkpoint, source, "-o", out, *FAST)[0] == 0
    assert len(pd.read_csv(out)) == 40 and not partial_folder(out).exists()


def test_an_edit_before_the_resume_point_is_refused_and_one_after_it_is_read(
        checkpoint, tmp_path, monkeypatch):
    """The rows already written must be the input's rows: the bytes before
    the resume point are hashed (here the identity's head and tail hashes
    cover 16 bytes, so that only that check sees an edit of the same size)."""
    monkeypatch.setattr(screen_module, "IDENTITY_BYTES", 16)
    src = write_input(tmp_path / "in.csv", SMILES[:30])
    out = tmp_path / "out.csv"
    flags = ["--chunk-size", "8", *FAST]
    with monkeypatch.context() as m:
        crash_in_chunk(m, predict_cli, "prediction_columns", 2)
        assert cli("predict", checkpoint, src, "-o", out, *flags)[0] == 130
    data = src.read_bytes()
    src.write_bytes(data.replace(b",mol3\n", b",mol9\n"))     # row 4: already written
    assert_error(cli("predict", checkpoint, src, "-o", out, "--resume", *flags), 1,
                 "the first 16 rows of", "changed since they were written")
    src.write_bytes(data.replace(b",mol24\n", b",mol99\n"))   # row 25: not read yet
    code, _, err = cli("predict", checkpoint, src, "-o", out, "--resume", *flags)
    assert code == 0, err
    assert pd.read_csv(out)["smiles"].tolist() == SMILES[:30]


def test_resume_without_a_partial_output_starts_from_the_first_row(checkpoint, source,
                                                                   tmp_path):
    out = tmp_path / "out.csv"
    code, _, err = cli("predict", checkpoint, source, "-o", out, "--resume", *FAST)
    assert code == 0 and "no partial output" in err
    assert len(pd.read_csv(out)) == 40


def test_a_second_run_on_the_same_output_is_refused(checkpoint, source, tmp_path):
    out = tmp_path / "out.csv"
    identity = Identity("predict", "0" * 64, {}, {})
    holder = PartialOutput(out, identity, CSVSink("smiles"), io.StringIO())
    holder.open(resume=False)
    try:
        assert_error(cli("predict", checkpoint, source, "-o", out, *FAST), 2,
                     "is being written by another graphformer run")
    finally:
        holder.close()
    assert cli("predict", checkpoint, source, "-o", out, *FAST)[0] == 0


# --------------------------------------------------------------------------- reading

cells = st.text(alphabet=st.sampled_from(list('CcO1(=)N, "\'\tx')), max_size=6)


@given(rows=st.lists(st.tuples(cells, cells, st.sampled_from(["", "\n", "  \n"]),
                               st.integers(1, 2)), max_size=12),
       bom=st.booleans(), crlf=st.booleans(), chunk=st.integers(1, 5))
@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
def test_chunks_number_and_read_rows_as_read_csv_does(tmp_path, rows, bom, crlf, chunk):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(["smiles", "name"])
    for smiles, name, after, fields in rows:
        writer.writerow([smiles, name][:fields])
        buffer.write(after)
    path = tmp_path / "gen.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode())
    frame = read_csv(path)
    got = list(CSVChunks(path, "smiles", chunk_size=chunk))
    assert all(len(c.rows) == chunk for c in got[:-1])
    assert [r for c in got for r in c.rows] == frame.index.tolist()
    assert [s for c in got for s in c.smiles] == frame["smiles"].tolist()
    # each chunk ends where the next one starts: a reader started there reads the rest
    if len(got) > 1:
        rest = list(CSVChunks(path, "smiles", chunk_size=chunk, start=got[0].end,
                              first_index=1))
        assert [(c.index, c.rows, c.smiles) for c in rest] == \
            [(c.index, c.rows, c.smiles) for c in got[1:]]


def test_reading_and_featurising_stay_a_bounded_window_ahead(tmp_path):
    src = write_input(tmp_path / "big.csv", SMILES * 50)   # 2,000 rows
    reader = CSVChunks(src, chunk_size=100)
    consumed = []

    def counted(items):
        for item in items:
            consumed.append(item)
            yield item

    results = featurise(counted(pieces(reader, 10)), Featuriser(str(src)), workers=2)
    first = next(results)
    assert first.rows == list(range(1, 11)) and first.batch.num_graphs == 10
    assert len(consumed) <= AHEAD_PER_WORKER * 2     # not the file's 200 pieces
    assert reader._fh.tell() < src.stat().st_size / 4
    results.close()                                   # the workers stop


def test_a_worker_that_dies_is_one_line_and_resume_completes(checkpoint, source, tmp_path,
                                                             monkeypatch):
    real = Featuriser.__call__
    parent = os.getpid()

    def dying(self, piece):
        if os.getpid() != parent and piece.chunk.index == 2:
            os._exit(9)                       # as the kernel's OOM killer would end it
        return real(self, piece)

    monkeypatch.setattr(Featuriser, "__call__", dying)
    out = tmp_path / "o.csv"
    result = cli("predict", checkpoint, source, "-o", out, "--workers", "2", "--chunk-size",
                 "10", *FAST)
    assert_error(result, 1, "a worker process that turns SMILES into graphs died",
                 "fewer --workers")
    assert not out.exists()   # the chunks done before it (if any) are kept for --resume
    monkeypatch.setattr(Featuriser, "__call__", real)
    assert cli("predict", checkpoint, source, "-o", out, "--resume", *FAST, "--chunk-size",
               "10")[0] == 0
    assert len(pd.read_csv(out)) == 40


def test_feature_values_are_checked_by_row(tmp_path):
    src = tmp_path / "f.csv"
    src.write_text("smiles,mw\nCCO,1.5\nCCC,\nCCN,heavy\n")
    chunks = CSVChunks(src, feature_columns=["mw"], chunk_size=2)
    first = next(iter(chunks))
    assert first.features[0] == (1.5,) and np.isnan(first.features[1][0])
    with pytest.raises(DataError, match=r"f\.csv, row 3, column 'mw': feature value 'heavy'"):
        list(CSVChunks(src, feature_columns=["mw"], chunk_size=2))


def test_progress_names_rate_share_and_time_left():
    stream = io.StringIO()
    meter = Progress("predict", 1000, stream, every=0.0)
    meter.update(50, 250)
    line = stream.getvalue()
    assert line.startswith("predict: 50 molecules, ") and "mol/s" in line
    assert "25.0% of the file" in line and "ETA " in line and line.endswith("\n")
