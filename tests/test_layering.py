"""Data flows one way (config -> data -> modeling -> engine -> evaluation): the model code never imports the
data package (whose frame decoders need libraries a model-only environment, e.g. a benchmark host, may lack)."""

import subprocess
import sys


def test_importing_the_models_imports_no_data_code():
    code = ("import sys, stmixer.modeling, stmixer.solver; "
            "print(sorted(m for m in sys.modules if m.startswith('stmixer.data') or m == 'simplejpeg'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
