"""Mutation testing of the surgery core with mutmut: ``make mutate``. Not part of ``make test`` or CI.

mutmut changes one thing at a time in a module (``<`` to ``<=``, a constant, a dropped argument...) and runs
the tests; a mutant the tests do not notice *survived*. Each group below is mutated in its own work folder,
``.mutate/<group>/``, with its own selection of fast tests: mutmut first records which selected test calls
which function, then runs for each mutant only the tests that call the mutated function, fastest first,
stopping at the first failure. Results are cached there per function, so a second run only re-tests the
functions that changed (delete ``.mutate/`` to start afresh).

Usage::

    python tools/mutate.py                     # every group, then the report
    python tools/mutate.py io checking         # some groups (in the order of GROUPS)
    python tools/mutate.py --report            # the report of what has run, running nothing

The report gives the score per module, killed / (all mutants), where a mutant no selected test reaches
counts as surviving, and lists the survivors with their one-line change. Survivors that ``docs/mutation.md``
names are marked ``justified`` (an equivalent or harmless mutant, with the reason there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutate"
JUSTIFIED = ROOT / "docs" / "mutation.md"

KILLED = {1, 3, 24, -24, 36, 152, 255}  # test failure, pytest internal error, timeouts (mutmut's codes)
SURVIVED, NO_TESTS = 0, {5, 33}


@dataclass(frozen=True)
class Group:
    """Modules mutated together, and the tests whose failures may kill their mutants."""

    modules: tuple[str, ...]  # paths under eqsurgeon/
    tests: tuple[str, ...]  # pytest arguments: files, node ids
    deselect: str = ""  # a -k expression for slow tests that add nothing here


SITE_TESTS = (
    "tests/test_sites.py",
    "tests/test_sites_channels.py",
    "tests/test_channels_units.py",
    "tests/test_capture_sites_units.py",
    "tests/test_graph_ops.py",
    "tests/test_meta_shapes.py",
    "tests/test_sites_frontends_agree.py",
    "tests/test_sites_walk_units.py",
    "tests/test_sites_leaves.py",
    "tests/test_sites_corpus.py",
    "tests/test_checking.py",
    "tests/test_equivalence.py::test_graph_matches_eager",
)
IO_MODULES = tuple(
    f"io/{name}.py" for name in ("files", "fitting", "recordjson", "safetensors_file", "pth_file", "weights")
)
FORMAT_MODULES = tuple(f"io/{name}.py" for name in ("folder_files", "hf_folder", "smp_folder", "formats"))

# In the order they run: the surgery core first, then the finer parts of finding sites.
GROUPS = {
    "checking": Group(
        ("checking.py",),
        ("tests/test_checking.py", "tests/test_recognize.py", "tests/test_cli_analyze_check.py"),
        deselect="not zoo and not plot",  # 2 s per zoo model, a plot: the fixtures reach the same code
    ),
    "measure": Group(
        ("measure/__init__.py", "measure/hooks.py", "measure/pool.py"),
        ("tests/test_measure.py", "tests/test_calibration.py", "tests/test_sites_frontends_agree.py"),
        deselect="not iid_upsampled_maps",  # 25 s under mutmut's tracing, paid again by every survivor
    ),
    "calibration": Group(
        ("calibration.py", "equalize.py"),
        # fold ≡ insert is checked on six fixtures in test_calibration; the zoo-wide equivalence tests
        # (2-4 s per model) would make every surviving mutant here cost minutes
        (
            "tests/test_calibration.py",
            "tests/test_equalize.py",
            "tests/test_measure.py",
            "tests/test_sites_frontends_agree.py",
        ),
        deselect="not iid_upsampled_maps",
    ),
    "io": Group(  # weights and calibration records: files, state dicts, record JSON
        IO_MODULES,
        (
            "tests/test_io.py",
            "tests/test_formats.py",
            "tests/test_equivalence.py::test_save_load_round_trip_is_exact",
        ),
        # 16 s of subprocesses, and the round trips of zoo models (2-5 s each): fixtures cover the same code
        deselect="not across_processes and not zoo",
    ),
    "find": Group(("capture.py", "sites.py", "graph_ops.py", "op_tables.py", "call_args.py"), SITE_TESTS),
    "channels": Group(("channels.py",), SITE_TESTS),
    "leaves": Group(  # searching inside opaque leaf modules
        ("leaves.py", "inline.py", "shape_tracer.py", "meta_shapes.py"),
        (
            "tests/test_leaves_units.py",  # each route alone: either one hides the other's bugs from the rest
            "tests/test_meta_shapes.py",
            "tests/test_leaves_more.py",
            "tests/test_sites_leaves.py",
            "tests/test_sites_corpus.py",
            "tests/test_sites_channels.py",
        ),
    ),
    "formats": Group(  # the other model formats: transformers and smp folders, MMSegmentation .pth
        FORMAT_MODULES,
        (
            "tests/test_formats_units.py",
            "tests/test_formats.py",
            "tests/test_io.py",
            "tests/test_ecosystems.py",
        ),
        deselect="not across_processes",
    ),
    "recognize": Group(
        ("recognize.py", "weight_slices.py"),
        ("tests/test_recognize_units.py", "tests/test_recognize.py", "tests/test_checking.py"),
        # each zoo model is a check, a calibration and a re-check (5-10 s, paid by every survivor): fcn_tiny
        # (mmcv kaiming init, balanced inputs) and segformer_tiny (Linear fusion) reach what the others do
        deselect="not zoo or fcn_tiny or segformer_tiny",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", help=f"groups to run, of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--report", action="store_true", help="only print the report of earlier runs")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel mutants")
    args = parser.parse_args(argv)
    names = args.groups or list(GROUPS)
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        parser.error(f"unknown group {', '.join(unknown)}; use {', '.join(GROUPS)}")
    if not args.report:
        for name in names:
            run_group(name, GROUPS[name], args.max_children)
    return report(names)


def run_group(name: str, group: Group, max_children: int) -> None:
    """Prepare ``.mutate/<name>/`` and run mutmut there; its output goes to ``mutmut.log`` there."""
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    for folder in ("eqsurgeon", "tests", "fixtures"):
        _sync(ROOT / folder, work / folder)
    (work / "pyproject.toml").write_text(_config(group))
    _retest_survivors(work)
    log = work / "mutmut.log"
    print(f"[{name}] mutating {', '.join(group.modules)} (log: {log.relative_to(ROOT)})", flush=True)
    start = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    with open(log, "w") as out:
        cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
        code = subprocess.run(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    print(f"[{name}] mutmut exited {code} after {time.monotonic() - start:.0f} s", flush=True)


def report(names: list[str]) -> int:
    """Print the score per module and the survivors; exit status 0 when every module was run.

    The score is killed / mutants run; ``with justified`` also counts the survivors that
    ``docs/mutation.md`` names (in backquotes) as equivalent or harmless.
    """
    justified = JUSTIFIED.read_text() if JUSTIFIED.exists() else ""
    rows, survivors, missing = [], [], []
    for name in names:
        for module in GROUPS[name].modules:
            meta = WORK / name / "mutants" / "eqsurgeon" / f"{module}.meta"
            if not meta.exists():
                missing.append(module)
                continue
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            killed = sum(c in KILLED for c in codes.values())
            alive = sorted(k for k, c in codes.items() if c == SURVIVED or c in NO_TESTS)
            pending = sum(c is None for c in codes.values())
            ok = sum(f"`{k}`" in justified for k in alive)
            rows.append((module, len(codes) - pending, killed, ok, pending))
            survivors += [(name, module, k, codes[k] in NO_TESTS, f"`{k}`" in justified) for k in alive]
    print(f"\n{'module':<24} {'mutants':>8} {'killed':>7} {'score':>7} {'with justified':>15}")
    for module, total, killed, ok, pending in rows:
        note = f"  ({pending} not run)" if pending else ""
        scores = f"{_pct(killed, total):>7} {_pct(killed + ok, total):>15}"
        print(f"{module:<24} {total:>8} {killed:>7} {scores}{note}")
    total, killed, ok = (sum(r[i] for r in rows) for i in (1, 2, 3))
    pending = sum(r[4] for r in rows)
    print(f"{'core':<24} {total:>8} {killed:>7} {_pct(killed, total):>7} {_pct(killed + ok, total):>15}")
    if pending:
        print(f"not run: {pending} mutants of the modules above")
    if missing:
        print(f"not run yet: {', '.join(missing)}")
    print(f"\nsurvivors ({len(survivors)}; justified in docs/mutation.md: {sum(s[4] for s in survivors)})")
    for group, module, key, untested, is_ok in survivors:
        tag = "justified" if is_ok else ("no test reaches it" if untested else "survived")
        print(f"  {key}  [{tag}]\n      {_change(WORK / group, module, key)}")
    return 1 if missing else 0


def _retest_survivors(work: Path) -> None:
    """Mark earlier survivors untested: mutmut keeps a verdict until the function changes, and a survivor
    may have been killed by a test added since."""
    for meta in (work / "mutants").rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        for key, code in codes.items():
            if code == SURVIVED or code in NO_TESTS:
                codes[key] = None
        meta.write_text(json.dumps(data, indent=4))


def _config(group: Group) -> str:
    add = ["-p", "no:cacheprovider", "-o", "addopts=", "-m", "not slow", "-W", "ignore"]
    if group.deselect:
        add += ["-k", group.deselect]
    mutmut = {
        "source_paths": ["eqsurgeon"],
        "only_mutate": [f"eqsurgeon/{m}" for m in group.modules],
        "also_copy": ["fixtures/"],
        "pytest_add_cli_args_test_selection": list(group.tests),
        "pytest_add_cli_args": add,
        # Fork each mutant from the process that ran the clean tests: torch.export and fx are warm there
        # (a cold fork spends ~30 s re-initializing them). One torch thread keeps forking safe.
        "process_isolation": "fork",
        "use_git_change_detection": False,
    }
    lines = ["[tool.pytest.ini_options]", 'markers = ["slow: takes more than a few seconds"]', ""]
    lines.append("[tool.mutmut]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in mutmut.items()]
    return "\n".join(lines) + "\n"


def _sync(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst`` keeping modification times, so mutmut re-tests only changed files."""
    for path in src.rglob("*"):
        if "__pycache__" in path.parts or path.is_dir():
            continue
        target = dst / path.relative_to(src)
        if target.exists() and target.stat().st_mtime == path.stat().st_mtime:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for path in dst.rglob("*.py"):  # files deleted in the source
        if not (src / path.relative_to(dst)).exists():
            path.unlink()


def _change(work: Path, module: str, key: str) -> str:
    """The mutated line(s) of one mutant, ``old  →  new``."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    here = Path.cwd()
    os.chdir(work)  # mutmut reads its files relative to the working folder
    try:
        diff = get_diff_for_mutant(key, path=Path("eqsurgeon") / module).splitlines()
    finally:
        os.chdir(here)
    old = [line[1:].strip() for line in diff if line.startswith("-") and not line.startswith("---")]
    new = [line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++")]
    return f"{' / '.join(old)}  →  {' / '.join(new)}"[:200]


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


if __name__ == "__main__":
    sys.exit(main())
