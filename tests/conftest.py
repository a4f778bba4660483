"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from tiny import make_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The tiny shapes world (seed 3) that training tests read and never modify (a test that corrupts an
    image copies it first). A test file with its own `world` fixture uses that one instead."""
    return make_world(tmp_path_factory.mktemp("world"), seed=3)
