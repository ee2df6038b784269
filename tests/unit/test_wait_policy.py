"""``import switchkd`` makes OpenMP threads sleep at barriers (OMP_WAIT_POLICY=PASSIVE) unless the user
chose a policy: spinning threads made DBiLD 3-4x slower beside one other busy process (docs/scale.md)."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE"), ("passive", "passive")])
def test_the_wait_policy_defaults_to_passive_and_the_users_choice_stays(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, switchkd; print(os.environ['OMP_WAIT_POLICY'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected
