"""The tests import the package from this checkout (python/), whatever is installed, and load the
libsona that SONA_LIBRARY names (ctest sets it to the build's) or the usual search finds."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
