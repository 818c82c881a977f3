"""Every flagfile in experiments/flags names only flags the programs define, with values their parsers accept."""
import glob
import importlib
import importlib.util
import os
import re

import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "flags", "*.flags")))


def _defined_flags():
    # real_common defines the real-data flags on top of common's; evaluate/evaluate_real add theirs.
    for module in ("experiments.common", "experiments.real_common", "experiments.evaluate",
                   "experiments.rgb_weak_common"):
        importlib.import_module(module)
    return flags.FLAGS


def _entries(path):
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"--([A-Za-z0-9_]+)(?:=(.*))?", line)
        assert m, f"{path}: expected '--name=value' or '--[no]name', found {line!r}"
        yield m.group(1), m.group(2)


def test_there_are_flagfiles():
    names = {os.path.basename(p) for p in FLAGFILES}
    assert {"demo.flags", "table2a_joint.flags", "table2a_cpu_frontal.flags", "nyu_full.flags"} <= names


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_parses(path):
    defined = _defined_flags()
    for name, value in _entries(path):
        if value is None:
            key = name if name in defined else name[2:] if name.startswith("no") else name
            assert key in defined, f"{os.path.basename(path)}: --{name} is not a flag of the programs"
            assert isinstance(defined[key], flags.BooleanFlag), f"--{name} without a value needs a boolean flag"
            continue
        assert name in defined, f"{os.path.basename(path)}: --{name} is not a flag of the programs"
        defined[name].parser.parse(value)  # raises on a value the flag rejects, without setting it
    # the usage line names a program that exists
    text = open(path).read()
    for module in re.findall(r"python -m (experiments\.[a-z_]+)", text):
        assert importlib.util.find_spec(module) is not None, f"{path}: {module} does not exist"
