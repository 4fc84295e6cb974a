"""`jobstream bench` without the `jobstream[bench]` extra says how to install it (exit 2),
instead of a traceback."""

import subprocess
import sys

# sys.modules[name] = None makes `import name` fail as if it were not installed.
PROBE = """
import sys
sys.modules["psutil"] = None
sys.argv = ["jobstream", "bench", "--quick"]
from jobstream.cli.app import main
main()
"""


def test_bench_without_its_extra_names_the_install_command() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == 2
    assert "pip install 'jobstream[bench]'" in shown.stderr
    assert "Traceback" not in shown.stderr
