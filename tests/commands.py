"""Running ``graphformer`` in the test process and checking its one-line errors."""
import contextlib
import io


def cli(*argv):
    """``main(argv)`` in this process: (exit code, stdout, stderr)."""
    from graphformer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def refused(result, code, *texts):
    """Exit ``code``, no traceback, and exactly one ``graphformer: error:``
    line, holding every one of ``texts``; returns the line."""
    got, _, err = result
    assert got == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("graphformer: error:")]
    assert len(lines) == 1, err
    for text in texts:
        assert str(text) in lines[0], lines[0]
    return lines[0]
