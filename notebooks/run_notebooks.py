"""Execute every notebook here headless (nbclient), failing on the first error.

Usage: python run_notebooks.py [EXPORT_DIR]. The notebooks read EXPORT_DIR (default: the
sample in data/) through KPIWATCH_EXPORT; outputs are not written back (the committed
notebooks stay stripped). Run by CI (.ci/run) and tests/it/export.rs.
"""
import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient

here = pathlib.Path(__file__).resolve().parent
if len(sys.argv) > 1:
    os.environ["KPIWATCH_EXPORT"] = str(pathlib.Path(sys.argv[1]).resolve())
os.environ.setdefault("MPLBACKEND", "Agg")
notebooks = sorted(here.glob("*.ipynb"))
if not notebooks:
    sys.exit("no notebooks found")
for path in notebooks:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(here)}}).execute()
    print(f"ok {path.name}")
print(f"{len(notebooks)} passed, 0 failed")
