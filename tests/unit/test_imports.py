import subprocess
import sys
from pathlib import Path

import pipeline_tasks


def test_pipeline_tasks_is_framework_free() -> None:
    """The stages run on a bare GPU box: importing all of them pulls in no prefect or mlflow."""
    modules = sorted(p.stem for p in Path(pipeline_tasks.__file__).parent.glob("*.py"))
    code = (
        "import sys\n"
        + "".join(f"import pipeline_tasks.{m}\n" for m in modules)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'mlflow'))\n"
        + "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(modules) >= 9
