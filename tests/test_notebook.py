"""examples/induction_circuit.ipynb runs from top to bottom in a fresh kernel (nbclient), trains its
small run, and its result holds: ablating the induction head it found raises the loss on the repeated
part above the clean loss, which lies far below chance. The notebook is kept with its outputs stripped."""
import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from conftest import HANG_S

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "induction_circuit.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_and_ablating_the_induction_head_raises_the_loss(monkeypatch):
    monkeypatch.delenv("LAB_NOTEBOOK_RUN", raising=False)    # train the notebook's own small run
    # the kernel imports this checkout's lab (its working directory is the repository root)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=HANG_S, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert any(o.output_type == "display_data" and "image/png" in o.data
               for c in nb.cells if c.cell_type == "code" for o in c.outputs)    # the two attention patterns
    found = re.search(r"RESULT clean=([\d.]+) ablated=([\d.]+) ablated_prev=([\d.]+)", text)
    assert found, text[-2000:]
    clean, ablated, ablated_prev = map(float, found.groups())
    assert clean < 2.0, text[-2000:]          # the circuit formed: chance is ln 64 = 4.16 (0.58 measured)
    assert ablated > clean + 0.1, text[-2000:]   # 0.89 measured
    assert ablated_prev > clean, text[-2000:]
