"""Browsing pages never import torch: only drawing images does (DESIGN: dashboard -> db; compute lazily;
that the Units page does draw images is tested in test_pages)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a fresh interpreter (the test process has torch imported already)
def test_browsing_pages_do_not_import_torch(dash_store):
    code = textwrap.dedent(f"""
        import os, sys
        os.environ["GANDISSECT_DB"] = {str(dash_store)!r}
        from tests.dashboard.apptest import open_page
        at = open_page("overview")
        for page in ("compare", "causal", "sql", "flags", "model_cards"):
            at.switch_page(f"app_pages/{{page}}.py").run()
            assert not at.exception, (page, [e.value for e in at.exception])
        os.environ["GANDISSECT_DASHBOARD_IMAGES"] = "0"  # the Realism page without its strips (they need torch)
        at.switch_page("app_pages/realism.py").run()
        at.selectbox(key="realism_model").set_value("tiny-gan").run()  # other pages may have picked another
        at.selectbox(key="realism_layer").set_value("layer3").run()
        assert not at.exception, [e.value for e in at.exception]
        at.button(key="realism_flag_tiny-gan_layer3_3").click().run()  # a flag is a store write: no torch either
        assert not at.exception, [e.value for e in at.exception]
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False"]
