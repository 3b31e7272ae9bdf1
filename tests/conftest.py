import os
import sys

# Integration helpers (tests/integration/harness.py) import as plain modules.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "integration"))
