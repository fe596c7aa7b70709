"""Every user path goes through mobilebert_jax/storage.py: a scan of the library's source.

A raw `open()`, a file-system `os.path`/`os` call, `os.makedirs`, `glob`, `shutil` or a hand-written `"://"` test
reaches only local files, so a gs:// vocabulary, corpus, workdir or output would fail there (or land in a local
`./gs:/` folder). Outside storage.py such a call is allowed only on a path that can never be a user's:

- a line that derives the path from `__file__` or `sys.prefix` (the package's own files, the virtualenv);
- a line marked `# not a user path: <why>` (e.g. /sys device files, a scratch file this host writes and reads).
"""

from __future__ import annotations

import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "mobilebert_jax"
DOOR = PACKAGE / "storage.py"

RAW = {
    "builtin open()": re.compile(r"(?<![\w.])(?<!def )open\("),
    "os.path file-system call": re.compile(
        r"\bos\.path\.(isfile|isdir|exists|lexists|islink|getsize|getmtime|abspath|realpath|expanduser)\("),
    "os file-system call": re.compile(r"\bos\.(makedirs|mkdir|walk|listdir|scandir|remove|unlink|rmdir|rename|stat)\("),
    "glob": re.compile(r"\bglob\.i?glob\(|^\s*(import glob|from glob import)"),
    "shutil": re.compile(r"\bshutil\.(copy\w*|move|rmtree|disk_usage)\("),
    'hand-written "://" test': re.compile(r"""["']://["']|startswith\(\s*["']gs://"""),
}
ALLOWED = re.compile(r"__file__|sys\.prefix|# not a user path: \S")


def _violations(source: str, name: str) -> list[str]:
    found = []
    for number, line in enumerate(source.splitlines(), start=1):
        code = line.split("#", 1)[0] if "# not a user path:" not in line else line
        if line.lstrip().startswith("#") or ALLOWED.search(line):
            continue
        for kind, pattern in RAW.items():
            if pattern.search(code):
                found.append(f"{name}:{number}: {kind}: {line.strip()}")
    return found


def test_no_user_path_bypasses_storage():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != DOOR:
            found += _violations(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not found, "use mobilebert_jax.storage (or mark a non-user path):\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    'with open(path, "rb") as f:',
    "if not os.path.isfile(vocab):",
    "os.makedirs(out, exist_ok=True)",
    "files = glob.glob(spec, recursive=True)",
    'if "://" in str(workdir):',
    'remote = path.startswith("gs://")',
    "shutil.copyfile(a, b)",
])
def test_the_scan_catches_each_kind(line):
    assert _violations(line, "x.py")


@pytest.mark.parametrize("line", [
    "with storage.open(path) as f:",
    "storage.path(p).open('rb')",
    "ROOT = os.path.dirname(os.path.abspath(__file__))",
    "with open(vendor_file) as f:  # not a user path: a /sys device file",
    "# with open(path) as f: in a comment",
    "x = os.path.join(root, name)",
])
def test_the_scan_lets_these_through(line):
    assert not _violations(line, "x.py")
