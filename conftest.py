# Puts the repository root first on sys.path so that tests import this checkout's package.


def pytest_configure(config):
    """Register the project's pytest markers."""
    config.addinivalue_line(
        "markers", "mmaction2: holds a model of mmaction2's family to the official fixtures in tests/reference/mmaction2")
