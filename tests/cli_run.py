"""Run the `loom` command in-process: `loom(capsys, "info", path)` -> (exit code, stdout, stderr)."""
from loom.cli.main import main


def loom(capsys, *argv) -> tuple[int, str, str]:
    """main(argv) with every argument as a string; only this call's output is returned."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
