import os
import sys

# tests import the flat top-level modules (model, kl, train, ...) from the repo root
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
