"""Data files as `loom train`, `eval` and `run` read and write them (loom/datasets/files.py): every CSV
column is an input to run unless --target names one, .npz x alone for run, outputs by extension that
read back to the model's outputs, header detection, text class labels saved with the model, and
damaged or empty files as one-line errors naming the file."""
import csv
import io
import json

import numpy as np
import pytest

import loom
from loom import config as C
from loom.cli.main import main
from loom.datasets import files
from loom.errors import ConfigError, FormatError, ShapeError
from loom.nn import Network
from loom.nn.train import predict

NAMES = ["virginica", "setosa", "versicolor"]     # as they appear in the file, not sorted


def cli(capsys, *args):
    """(exit code, stdout, stderr) of `loom ARGS`, run in this process."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def error_line(capsys, *args, code=3):
    """The one-line error of a failing `loom ARGS`."""
    got, _, err = cli(capsys, *args)
    assert got == code, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("loom: error: "), err
    return err.strip()


def tiny_model(tmp_path, inputs, outputs=3, dtype="float32", labels=None, name="model.loom"):
    cfg = {"loom": 1, "dtype": dtype, "input": {"shape": [inputs]},
           "layers": [{"type": "dense", "units": 5, "activation": "relu"}, {"type": "dense", "units": outputs}]}
    if labels is not None:
        cfg["labels"] = labels
    path = tmp_path / name
    Network.from_config(cfg).save(path)
    return path


def outputs_of(model, X):
    net = loom.load(model)
    return predict(net, np.asarray(X, dtype=net.input_spec.dtype))


def write_csv(path, rows, header=None):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


def iris(tmp_path, n=60, header=True, name="iris.csv"):
    """An iris-style CSV: 4 numbers and a class name per line; returns (path, X, names per row)."""
    rng = np.random.default_rng(1)
    k = np.arange(n) % 3
    X = np.round(rng.normal(size=(n, 4)) + np.eye(3, 4)[k] * 3, 3)
    rows = [[*map(repr, x.tolist()), NAMES[i]] for x, i in zip(X, k)]
    write_csv(tmp_path / name, rows, ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]
              if header else None)
    return tmp_path / name, X, [NAMES[i] for i in k]


def net_json(tmp_path, outputs=3, labels=None):
    cfg = {"loom": 1, "input": {"shape": [4]},
           "layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": outputs}],
           "training": {"optimizer": {"type": "adam", "lr": 0.05}, "batch_size": 16}}
    if labels is not None:
        cfg["labels"] = labels
    (tmp_path / "net.json").write_text(json.dumps(cfg))
    return tmp_path / "net.json"


# --- run: which columns are inputs --------------------------------------------------------------------

def test_run_reads_every_csv_column_unless_a_target_is_named(tmp_path, capsys):
    model = tiny_model(tmp_path, 784)
    X = np.random.default_rng(0).integers(0, 256, size=(4, 785)).astype(np.float64)
    write_csv(tmp_path / "784.csv", X[:, :784].astype(int).tolist())
    write_csv(tmp_path / "785.csv", X.astype(int).tolist())

    code, _, err = cli(capsys, "run", model, "--input", tmp_path / "784.csv", "--output", tmp_path / "y.npy")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), outputs_of(model, X[:, :784]))

    msg = error_line(capsys, "run", model, "--input", tmp_path / "785.csv", "--output", tmp_path / "z.npy")
    assert "785.csv: 785 input columns" in msg and "[784]" in msg and "--target" in msg
    assert not (tmp_path / "z.npy").exists()

    code, _, err = cli(capsys, "run", model, "--input", tmp_path / "785.csv", "--target", "last",
                       "--output", tmp_path / "z.npy")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), outputs_of(model, X[:, :784]))
    code, _, err = cli(capsys, "run", model, "--input", tmp_path / "785.csv", "--target", "0",
                       "--output", tmp_path / "first.npy")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), outputs_of(model, X[:, 1:]))


def test_run_text_column_without_target_names_the_cell_and_suggests_target(tmp_path, capsys):
    model = tiny_model(tmp_path, 4)
    path, _, _ = iris(tmp_path)
    msg = error_line(capsys, "run", model, "--input", path, "--output", tmp_path / "y.csv")
    assert "iris.csv: line 2, column 5: 'virginica' is not a number" in msg and "--target" in msg


def test_run_reads_npz_with_x_alone_and_ignores_y(tmp_path, capsys):
    model = tiny_model(tmp_path, 4)
    X = np.random.default_rng(2).normal(size=(7, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=X)
    code, _, err = cli(capsys, "run", model, "--input", tmp_path / "x.npz", "--output", tmp_path / "y.npy")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), outputs_of(model, X))
    np.savez(tmp_path / "xy.npz", x=X, y=np.arange(7))
    np.testing.assert_array_equal(files.load_x(tmp_path / "xy.npz", [4]), X)
    msg = error_line(capsys, "run", model, "--input", tmp_path / "x.npz", "--target", "last",
                     "--output", tmp_path / "y.npy")
    assert msg.startswith("loom: error: --target: names a column of a CSV input") and "x.npz" in msg


def test_train_and_eval_need_y_in_an_npz(tmp_path, capsys):
    model = tiny_model(tmp_path, 4)
    np.savez(tmp_path / "x.npz", x=np.ones((3, 4)), extra=np.zeros(2))
    for args in (["eval", model, "--data", tmp_path / "x.npz"],
                 ["train", net_json(tmp_path), "--data", tmp_path / "x.npz", "--out", tmp_path / "o"]):
        msg = error_line(capsys, *args)
        assert "x.npz: expected arrays named x and y, found arrays extra, x" in msg


def test_an_npz_without_x_names_the_arrays_found(tmp_path, capsys):
    model = tiny_model(tmp_path, 4)
    np.savez(tmp_path / "d.npz", inputs=np.ones((3, 4)), y=np.arange(3))
    msg = error_line(capsys, "run", model, "--input", tmp_path / "d.npz", "--output", tmp_path / "y.npy")
    assert "d.npz: expected an array named x, found arrays inputs, y" in msg
    with pytest.raises(FormatError, match="expected arrays named x and y, found arrays inputs, y"):
        files.load_xy(tmp_path / "d.npz")


# --- run: outputs by extension --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outputs_by_extension_read_back_exactly(tmp_path, capsys, dtype):
    model = tiny_model(tmp_path, 4, dtype=dtype)
    X = np.random.default_rng(3).normal(size=(9, 4)) * 10.0 ** np.arange(-3, 6).reshape(9, 1)
    np.save(tmp_path / "x.npy", X.astype(dtype))
    want = outputs_of(model, X)
    assert want.dtype == np.dtype(dtype)
    for ext in (".npy", ".npz", ".csv"):
        out = tmp_path / f"y{ext}"
        code, stdout, err = cli(capsys, "run", model, "--input", tmp_path / "x.npy", "--output", out)
        assert code == 0 and f"to {out}" in stdout, err
        if ext == ".npy":
            got = np.load(out)
        elif ext == ".npz":
            with np.load(out) as data:
                assert data.files == ["y"]
                got = data["y"]
        else:
            text = out.read_text()
            assert not text.startswith("\x93NUMPY") and len(text.splitlines()) == 9
            got = np.loadtxt(out, delimiter=",", dtype=np.float64, ndmin=2).astype(dtype)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        assert got.tobytes() == want.tobytes()


def test_csv_text_round_trips_every_float32_and_float64_value():
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        bits = rng.integers(0, 2 ** 31, size=4000).astype(np.uint32 if dtype == np.float32 else np.uint64)
        if dtype == np.float64:
            bits = bits << np.uint64(32) | rng.integers(0, 2 ** 31, size=4000).astype(np.uint64)
        Y = bits.view(dtype).reshape(1000, 4)
        Y = np.where(np.isfinite(Y), Y, dtype(1.5))
        Y[0] = [0.1, -0.0, np.finfo(dtype).max, np.finfo(dtype).tiny]
        rows = list(csv.reader(io.StringIO(files.csv_text(Y))))
        got = np.array([[float(c) for c in r] for r in rows]).astype(dtype)
        assert got.tobytes() == Y.tobytes()
    assert files.csv_text(np.array([[0.1, 2.0]], dtype=np.float32)) == "0.1,2.0\n"


def test_csv_outputs_of_a_sequence_model_are_flattened_per_sample(tmp_path):
    Y = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    files.save_outputs(tmp_path / "y.csv", Y)
    got = np.loadtxt(tmp_path / "y.csv", delimiter=",", dtype=np.float32)
    np.testing.assert_array_equal(got, Y.reshape(2, 12))


@pytest.mark.parametrize("name", ["y.txt", "y", "y.json", "y.npy.gz"])
def test_an_output_extension_loom_cannot_write_is_a_config_error(tmp_path, capsys, name):
    model = tiny_model(tmp_path, 4)
    np.save(tmp_path / "x.npy", np.ones((2, 4), dtype=np.float32))
    msg = error_line(capsys, "run", model, "--input", tmp_path / "x.npy", "--output", tmp_path / name)
    assert msg.startswith("loom: error: --output: ") and ".csv, .npy, .npz" in msg
    assert ("no extension" if name == "y" else f"extension '{name[name.rindex('.'):]}'") in msg
    assert not (tmp_path / name).exists()
    with pytest.raises(ConfigError) as err:
        files.output_format(tmp_path / name)
    assert err.value.path == "--output"


# --- CSV headers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, header", [
    ("a,b,c,d,species\n5.1,3.5,1.4,0.2,setosa\n4.9,3.0,1.4,0.2,versicolor\n", True),
    ("5.1,3.5,1.4,0.2,setosa\n4.9,3.0,1.4,0.2,versicolor\n", False),
    ("a,b,c,d,label\n5.1,3.5,1.4,0.2,0\n4.9,3.0,1.4,0.2,1\n", True),
    ("5.1,3.5,1.4,0.2,0\n4.9,3.0,1.4,0.2,1\n", False),
    ("x1,x2,3,x4,y\n5.1,3.5,1.4,0.2,0\n4.9,3.0,1.4,0.2,1\n", True),           # a header with a numeric name
    ("\ufeffa,b,c,d,species\n5.1,3.5,1.4,0.2,setosa\n", True),                 # a byte-order mark
    ("a,b,c,d,species\n\n5.1,3.5,1.4,0.2,setosa\n\n", True),                   # blank lines
])
def test_header_detection(tmp_path, text, header):
    (tmp_path / "d.csv").write_text(text, encoding="utf-8")
    X, Y, names = files.load_labeled(tmp_path / "d.csv", [4])
    rows = len([line for line in text.splitlines() if line.strip()]) - header
    assert X.shape == (rows, 4)
    np.testing.assert_array_equal(X[0], [5.1, 3.5, 1.4, 0.2])
    if names is not None:
        assert names == sorted({line.rsplit(",", 1)[1] for line in text.splitlines()[header:] if line})


def test_a_bad_cell_on_the_first_line_is_data_not_a_header(tmp_path):
    (tmp_path / "d.csv").write_text("1,2,x,4,0\n1,2,3,4,1\n5,6,7,8,0\n")
    with pytest.raises(FormatError, match=r"d.csv: line 1, column 3: 'x' is not a number"):
        files.load_xy(tmp_path / "d.csv")


def test_target_by_header_name_and_line_numbers_count_blank_lines(tmp_path):
    (tmp_path / "d.csv").write_text("label,a,b\n\n1,0.5,0.25\n\n0,oops,1\n")
    with pytest.raises(FormatError, match=r"d.csv: line 5, column 2: 'oops' is not a number"):
        files.load_xy(tmp_path / "d.csv", target="label")
    (tmp_path / "d.csv").write_text("label,a,b\n1,0.5,0.25\n0,2,1\n")
    X, Y = files.load_xy(tmp_path / "d.csv", target="label")
    np.testing.assert_array_equal(X, [[0.5, 0.25], [2, 1]])
    assert Y.dtype == np.int64 and Y.tolist() == [1, 0]
    with pytest.raises(FormatError, match=r"no column named 'species' \(columns: label, a, b\)"):
        files.load_xy(tmp_path / "d.csv", target="species")


def test_a_target_column_mixing_numbers_and_text_is_an_error(tmp_path):
    (tmp_path / "d.csv").write_text("0,1,2,label\n1,2,3,0\n4,5,6,1\n")   # a header of numbers: read as data
    with pytest.raises(FormatError, match=r"column 4 holds both numbers \(line 2: '0'\) and text \(line 1: 'label'\)"):
        files.load_xy(tmp_path / "d.csv")


# --- class names --------------------------------------------------------------------------------------

def test_text_labels_map_to_sorted_ids_or_to_given_names(tmp_path):
    path, X, names = iris(tmp_path, n=9)
    Xr, Y, labels = files.load_labeled(path, [4])
    assert labels == sorted(NAMES)
    assert Y.tolist() == [sorted(NAMES).index(n) for n in names]
    np.testing.assert_array_equal(Xr, X)
    _, Y2, labels2 = files.load_labeled(path, [4], labels=NAMES)
    assert labels2 == NAMES and Y2.tolist() == [NAMES.index(n) for n in names]
    X3, Y3 = files.load_xy(path)                      # the two-value form: same ids, names not returned
    assert Y3.tolist() == Y.tolist() and X3.shape == (9, 4)
    np.savez(tmp_path / "s.npz", x=X, y=np.array(names))
    _, Y4, labels4 = files.load_labeled(tmp_path / "s.npz", [4])
    assert labels4 == sorted(NAMES) and Y4.tolist() == Y.tolist()
    with pytest.raises(FormatError, match=r"s.npz: y\[0\]: label 'virginica' is not one of the model's 2 classes"):
        files.load_labeled(tmp_path / "s.npz", [4], labels=["a", "b"])


def test_iris_labels_through_train_eval_and_run(tmp_path, capsys):
    path, X, names = iris(tmp_path)
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "train", net_json(tmp_path), "--data", path, "--epochs", "2", "--out", out,
                            "--quiet")
    assert code == 0, err
    model = out / "model.loom"
    net = loom.load(model)
    assert net.config["labels"] == sorted(NAMES)

    nohead, _, _ = iris(tmp_path, header=False, name="nohead.csv")
    code, stdout, err = cli(capsys, "eval", model, "--data", nohead, "--json", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    pred = outputs_of(model, X)
    accuracy = float(np.mean(np.argmax(pred, axis=1) == np.array([sorted(NAMES).index(n) for n in names])))
    assert report["accuracy"] == pytest.approx(accuracy)

    # numeric targets against a model with names: read as ids
    write_csv(tmp_path / "ids.csv", [[*x, sorted(NAMES).index(n)] for x, n in zip(X.tolist(), names)])
    code, _, err = cli(capsys, "eval", model, "--data", tmp_path / "ids.csv", "--json", tmp_path / "r2.json")
    assert code == 0, err
    assert json.loads((tmp_path / "r2.json").read_text())["accuracy"] == report["accuracy"]

    code, _, err = cli(capsys, "run", model, "--input", path, "--target", "species", "--output", tmp_path / "y.csv")
    assert code == 0, err
    rows = list(csv.reader(open(tmp_path / "y.csv")))
    assert rows[0] == [*sorted(NAMES), "label"]
    body = rows[1:]
    assert len(body) == len(X)
    got = np.array([[float(c) for c in r[:3]] for r in body], dtype=np.float64).astype(np.float32)
    assert got.tobytes() == pred.tobytes()
    assert [r[3] for r in body] == [sorted(NAMES)[k] for k in np.argmax(pred, axis=1)]
    code, _, err = cli(capsys, "run", model, "--input", path, "--target", "species", "--output", tmp_path / "y.npy")
    assert code == 0, err
    assert np.load(tmp_path / "y.npy").tobytes() == pred.tobytes()          # no names in an array output


def test_a_config_with_labels_fixes_their_order(tmp_path, capsys):
    path, _, names = iris(tmp_path, n=12)
    code, _, err = cli(capsys, "train", net_json(tmp_path, labels=NAMES), "--data", path, "--epochs", "1",
                       "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    assert loom.load(tmp_path / "o" / "model.loom").config["labels"] == NAMES


def test_train_rejects_labels_that_do_not_match_the_outputs(tmp_path, capsys):
    path, _, _ = iris(tmp_path, n=12)
    msg = error_line(capsys, "train", net_json(tmp_path, outputs=4), "--data", path, "--epochs", "1",
                     "--out", tmp_path / "o")
    assert "labels: 3 class names (setosa, versicolor, virginica) from the target column of" in msg
    assert "the network outputs 4 classes" in msg
    msg = error_line(capsys, "train", net_json(tmp_path, outputs=4, labels=["a", "b"]), "--data", path,
                     "--epochs", "1", "--out", tmp_path / "o")
    assert msg.startswith("loom: error: labels: 2 class names (a, b), but the network outputs 4 classes")
    msg = error_line(capsys, "train", net_json(tmp_path, labels=["a", "b", "c"]), "--data", path,
                     "--epochs", "1", "--out", tmp_path / "o")
    assert "line 2, column 5: label 'virginica' is not one of the model's 3 classes (a, b, c)" in msg


def test_eval_unknown_label_names_the_line_the_label_and_the_known_ones(tmp_path, capsys):
    model = tiny_model(tmp_path, 4, labels=sorted(NAMES))
    (tmp_path / "d.csv").write_text("a,b,c,d,species\n1,2,3,4,setosa\n1,2,3,4,daisy\n")
    msg = error_line(capsys, "eval", model, "--data", tmp_path / "d.csv")
    assert msg == (f"loom: error: {tmp_path / 'd.csv'}: line 3, column 5: label 'daisy' is not one of the "
                   f"model's 3 classes (setosa, versicolor, virginica)")
    (tmp_path / "ids.csv").write_text("1,2,3,4,0\n1,2,3,4,3\n")
    msg = error_line(capsys, "eval", model, "--data", tmp_path / "ids.csv")
    assert "ids.csv: line 2, column 5: target 3 is not a class id" in msg


def test_eval_text_labels_against_a_model_without_names(tmp_path, capsys):
    model = tiny_model(tmp_path, 4)
    path, _, _ = iris(tmp_path, n=6)
    msg = error_line(capsys, "eval", model, "--data", path)
    assert "iris.csv: the target column holds class names" in msg and "has none saved" in msg


def test_labels_in_the_config(tmp_path):
    base = {"loom": 1, "input": {"shape": [4]}, "layers": [{"type": "dense", "units": 3}]}
    assert "labels" not in C.validate(base)
    assert "labels" not in C.validate(C.validate(base))
    assert C.validate({**base, "labels": ["b", "a", "c"]})["labels"] == ["b", "a", "c"]
    assert C.dumps({**base, "labels": ["a"]}).rstrip().endswith('"labels": [\n    "a"\n  ]\n}')
    for bad, where in [(None, "labels"), ([], "labels"), ("abc", "labels"), (["a", ""], "labels[1]"),
                       (["a", 3], "labels[1]"), (["a", "b", "a"], "labels[2]")]:
        with pytest.raises(ConfigError) as err:
            C.validate({**base, "labels": bad})
        assert err.value.path == where
    with pytest.raises(ConfigError, match="repeats labels"):
        C.validate({**base, "labels": ["a", "b", "a"]})
    C.check_labels(["a", "b", "c"], (3,))
    C.check_labels(None, (2, 5))
    with pytest.raises(ConfigError, match=r"labels: 2 class names \(a, b\), but the network outputs 3 classes"):
        C.check_labels(["a", "b"], (3,))
    with pytest.raises(ConfigError, match=r"output has shape \[2, 5\], not a vector"):
        C.check_labels(["a", "b"], (2, 5))
    net = Network.from_config({**base, "labels": ["x", "y", "z"]})
    net.save(tmp_path / "m.loom")
    assert loom.load(tmp_path / "m.loom").config["labels"] == ["x", "y", "z"]


# --- empty and damaged files --------------------------------------------------------------------------

def test_zero_row_inputs_are_one_line_errors(tmp_path, capsys):
    model = tiny_model(tmp_path, 4)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b,c,d,y\n")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 4)), y=np.zeros(0))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), dtype=np.float32))
    cases = {"empty.csv": "empty.csv: empty CSV file (no rows)",
             "header.csv": "header.csv: no data rows, only a header (line 1)",
             "empty.npz": "empty.npz: x has no samples (shape [0, 4])",
             "empty.npy": "empty.npy: the array has no samples (shape [0, 4])"}
    for name, message in cases.items():
        msg = error_line(capsys, "run", model, "--input", tmp_path / name, "--output", tmp_path / "y.npy")
        assert message in msg
        if name != "empty.npy":
            assert message in error_line(capsys, "eval", model, "--data", tmp_path / name)
            assert message in error_line(capsys, "train", net_json(tmp_path), "--data", tmp_path / name,
                                         "--out", tmp_path / "o")
    with pytest.raises(ShapeError):
        files.load_x(tmp_path / "empty.npz")


def test_a_truncated_npz_is_a_format_error_naming_the_file(tmp_path, capsys):
    model = tiny_model(tmp_path, 4)
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((50, 4)), y=np.arange(50) % 3)
    data = buf.getvalue()
    for cut in (0, 10, len(data) // 2, len(data) - 10):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        msg = error_line(capsys, "eval", model, "--data", tmp_path / "cut.npz")
        assert f"{tmp_path / 'cut.npz'}: not a readable .npz archive" in msg
        msg = error_line(capsys, "run", model, "--input", tmp_path / "cut.npz", "--output", tmp_path / "y.npy")
        assert "cut.npz: not a readable .npz archive" in msg
    for pos in range(0, len(data), 3):                   # any damaged byte: an error of Loom's, never a leak
        damaged = bytearray(data)
        damaged[pos] ^= 0x55
        (tmp_path / "bad.npz").write_bytes(bytes(damaged))
        try:
            files.load_xy(tmp_path / "bad.npz", [4])
        except (FormatError, ShapeError):
            pass


def test_a_truncated_npy_and_swapped_formats(tmp_path, capsys):
    model = tiny_model(tmp_path, 4)
    buf = io.BytesIO()
    np.save(buf, np.ones((5, 4), dtype=np.float32))
    (tmp_path / "cut.npy").write_bytes(buf.getvalue()[:-7])
    msg = error_line(capsys, "run", model, "--input", tmp_path / "cut.npy", "--output", tmp_path / "y.npy")
    assert "cut.npy: not a readable .npy array" in msg
    (tmp_path / "a.npz").write_bytes(buf.getvalue())
    assert "a.npz: a .npy array, not an .npz archive" in error_line(
        capsys, "run", model, "--input", tmp_path / "a.npz", "--output", tmp_path / "y.npy")
    archive = io.BytesIO()
    np.savez(archive, x=np.ones((5, 4)))
    (tmp_path / "z.npy").write_bytes(archive.getvalue())
    assert "z.npy: an .npz archive, not a .npy array" in error_line(
        capsys, "run", model, "--input", tmp_path / "z.npy", "--output", tmp_path / "y.npy")
    assert "x.txt: no such file" in error_line(
        capsys, "run", model, "--input", tmp_path / "x.txt", "--output", tmp_path / "y.npy")
    (tmp_path / "x.txt").write_text("1,2,3,4\n")
    assert "x.txt: unknown input format; expected one of .npz, .npy, .csv, .csv.gz" in error_line(
        capsys, "run", model, "--input", tmp_path / "x.txt", "--output", tmp_path / "y.npy")
    np.save(tmp_path / "d.npy", np.ones((5, 4), dtype=np.float32))
    assert "d.npy: a .npy file holds inputs only" in error_line(capsys, "eval", model, "--data", tmp_path / "d.npy")


def test_malformed_csv_files(tmp_path, capsys):
    model = tiny_model(tmp_path, 4)
    cases = {"ragged.csv": ("1,2,3,4,0\n1,2,3,0\n", "ragged.csv: line 2 has 4 columns, expected 5 (as line 1)"),
             "hole.csv": ("a,b,c,d,y\n1,,3,4,0\n", "hole.csv: line 2, column 2: an empty cell"),
             "latin1.csv": (None, "latin1.csv: not UTF-8 text"),
             "gz.csv.gz": (b"not gzip", "gz.csv.gz: not a readable gzip file")}
    for name, (text, message) in cases.items():
        if isinstance(text, str):
            (tmp_path / name).write_text(text)
        else:
            (tmp_path / name).write_bytes(text if text is not None else "a,b,c,d,y\n1,2,3,4,caf\xe9\n".encode("latin-1"))
        assert message in error_line(capsys, "eval", model, "--data", tmp_path / name), name


# --- help ---------------------------------------------------------------------------------------------

def _help(capsys, command):
    try:
        code = main([command, "--help"])
    except SystemExit as exc:       # argparse's exit, where main does not catch it
        code = exc.code
    assert code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_states_the_defaults(capsys):
    text = _help(capsys, "run")
    assert "samples per forward pass (default: 256)" in text
    assert "default: none, every column is an input" in text
    assert "cpu (default)" in text and '"label" column' in text and ".npz (array y)" in text
    text = _help(capsys, "eval")
    assert "(default: last)" in text and "default: inferred" in text and "cpu (default)" in text
