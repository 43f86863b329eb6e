"""The GPU suite's tiers and smoke tests, checked on the CPU. tests/gpu is run on the device in tiers of one
call each (`pytest -m gpu_llm tests/gpu`, ...) and, after every GPU change, as one cheap test a module
(`pytest -m "gpu and smoke" tests/gpu`). So every tests/gpu/test_*.py module must be in conftest.py's TIERS
table (which names no other), mark its tests gpu, and mark at least one test smoke; and collecting the
folder must give each test exactly its module's tier marker. Modules that skip at import without CuPy are
checked from their source here (the collection check sees them where CuPy is installed)."""
import ast
import json
import os
import pathlib
import subprocess
import sys
import tomllib

GPU = pathlib.Path(__file__).resolve().parent / "gpu"
ROOT = GPU.parents[1]
MODULES = sorted(p.name for p in GPU.glob("test_*.py"))


def _tiers() -> dict:
    tree = ast.parse((GPU / "conftest.py").read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "TIERS" for t in targets):
            return ast.literal_eval(node.value)
    raise AssertionError("tests/gpu/conftest.py has no TIERS table")


def _marks(node) -> set:
    """Names of the pytest marks spelled anywhere in node: `pytest.mark.NAME` (or `mark.NAME`)."""
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
            and (isinstance(n.value, ast.Attribute) and n.value.attr == "mark"
                 or isinstance(n.value, ast.Name) and n.value.id == "mark")}


def _module_marks(name: str) -> tuple[set, set]:
    """(the marks of the module's pytestmark, the marks in its test functions' decorators, any case of
    a parametrization included)."""
    tree = ast.parse((GPU / name).read_text(encoding="utf-8"))
    module, tests = set(), set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            module |= _marks(node.value)
        functions = node.body if isinstance(node, ast.ClassDef) else [node]
        for f in functions:
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name.startswith("test_"):
                for decorator in f.decorator_list:
                    tests |= _marks(decorator)
    return module, tests


def _registered() -> set:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {m.split(":")[0].strip() for m in config["tool"]["pytest"]["ini_options"]["markers"]}


def test_the_tier_table_names_every_gpu_module_and_no_other():
    tiers = _tiers()
    assert MODULES, f"no test modules in {GPU}"
    missing = [m for m in MODULES if m not in tiers]
    assert not missing, f"tests/gpu modules missing from TIERS in tests/gpu/conftest.py: {missing}"
    gone = sorted(set(tiers) - set(MODULES))
    assert not gone, f"TIERS in tests/gpu/conftest.py names modules that do not exist: {gone}"
    unregistered = sorted(set(tiers.values()) - _registered())
    assert not unregistered, f"tier markers not registered in pyproject.toml's markers: {unregistered}"
    assert {"gpu", "smoke"} <= _registered()


def test_every_gpu_module_marks_its_tests_gpu_and_one_smoke():
    no_gpu, no_smoke = [], []
    for name in MODULES:
        module, tests = _module_marks(name)
        if "gpu" not in module:
            no_gpu.append(name)
        if "smoke" not in module | tests:
            no_smoke.append(name)
    assert not no_gpu, f"modules whose pytestmark lacks pytest.mark.gpu (-m 'gpu and smoke' skips them): {no_gpu}"
    assert not no_smoke, (f"modules with no test marked smoke (@pytest.mark.smoke, or one case as "
                          f"pytest.param(..., marks=pytest.mark.smoke)): {no_smoke}")


PROBE = '''import json, os
def pytest_collection_finish(session):
    with open(os.environ["LOOM_TIERS_PROBE"], "w") as f:
        json.dump({i.nodeid: sorted({m.name for m in i.iter_markers()}) for i in session.items}, f)
'''


def test_collecting_the_folder_gives_each_test_its_modules_tier_and_each_module_a_smoke_test(tmp_path):
    (tmp_path / "loom_tiers_probe.py").write_text(PROBE, encoding="utf-8")
    out = tmp_path / "marks.json"
    env = {**os.environ, "LOOM_TIERS_PROBE": str(out),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--strict-markers", "-p",
                          "no:cacheprovider", "-p", "loom_tiers_probe", "tests/gpu"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    marks = json.loads(out.read_text(encoding="utf-8"))
    tiers = _tiers()
    by_module: dict = {}
    for nodeid, names in marks.items():
        module = nodeid.split("::")[0].split("/")[-1]
        by_module.setdefault(module, []).append(names)
        got = sorted(set(names) & set(tiers.values()))
        assert got == [tiers.get(module)], f"{nodeid}: tier markers {got}, TIERS says {tiers.get(module)}"
    assert by_module, "collected no tests/gpu tests"
    no_smoke = sorted(m for m, items in by_module.items() if not any({"gpu", "smoke"} <= set(n) for n in items))
    assert not no_smoke, f"collected modules without a test -m 'gpu and smoke' selects: {no_smoke}"
