"""Generate the zoo table of docs/zoo.md from `eqsurgeon models --format json`.

The table in docs/zoo.md sits between the markers below and is never edited by hand; tests/test_docs.py
checks that it equals what this script generates, so it cannot drift from the zoo.

    python docs/gen_zoo.py            # print the table (runs `python -m eqsurgeon models --format json`)
    python docs/gen_zoo.py --write    # replace the table between the markers in docs/zoo.md
    eqsurgeon models --format json | python docs/gen_zoo.py -    # read the JSON from stdin

>>> doc = {"flops_input": [512, 512], "models": [{"name": "m", "params": 1500000, "gflops": 2.0,
...        "sites": 1, "paper_table": "", "mmseg_config": "", "tags": ["tiny"]}]}
>>> print(zoo_table(doc).splitlines()[2])
| `m` | 1.50 | 2.0 | 1 | – | – |
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

START = "<!-- zoo-table:start -->"
END = "<!-- zoo-table:end -->"
ZOO_MD = Path(__file__).with_name("zoo.md")


def zoo_table(document: dict[str, Any]) -> str:
    """The markdown table for a `eqsurgeon models --format json` document, one row per model.

    Args:
        document: the parsed JSON, with ``flops_input`` and ``models``.

    Returns:
        The table, ending with a newline.
    """
    h, w = document["flops_input"]
    lines = [
        f"| name | params (M) | GFLOPs {h}×{w} | sites | paper | MMSegmentation config (`configs/…`) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in document["models"]:
        gflops = "–" if row["gflops"] is None else f"{row['gflops']:.1f}"
        sites = "–" if row["sites"] is None else str(row["sites"])
        config = row["mmseg_config"].removeprefix("configs/")
        lines.append(
            f"| `{row['name']}` | {row['params'] / 1e6:.2f} | {gflops} | {sites} | "
            f"{row['paper_table'] or '–'} | {f'`{config}`' if config else '–'} |"
        )
    return "\n".join(lines) + "\n"


def table_in(markdown: str) -> str:
    """The text between the zoo-table markers of ``markdown`` (without the marker lines).

    >>> table_in(f"a\\n{START}\\n| x |\\n{END}\\nb")
    '| x |\\n'
    """
    _, sep, rest = markdown.partition(START + "\n")
    body, sep2, _ = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"the markers {START} and {END} are missing; put them around the table")
    return body


def replace_table(markdown: str, table: str) -> str:
    """``markdown`` with the text between the markers replaced by ``table``."""
    old = table_in(markdown)
    return markdown.replace(START + "\n" + old + END, START + "\n" + table + END, 1)


def models_json() -> dict[str, Any]:
    """Run `python -m eqsurgeon models --format json` with this interpreter and parse its stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "eqsurgeon", "models", "--format", "json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def main(argv: list[str]) -> int:
    """Print the table, or with ``--write`` update docs/zoo.md; ``-`` reads the JSON from stdin."""
    document = json.load(sys.stdin) if "-" in argv else models_json()
    table = zoo_table(document)
    if "--write" in argv:
        ZOO_MD.write_text(replace_table(ZOO_MD.read_text(), table))
        print(f"wrote {ZOO_MD}")
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
