import os
import sys

# Test helpers (gradcheck.py) live beside this file.
sys.path.insert(0, os.path.dirname(__file__))
