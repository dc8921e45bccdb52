# Puts the repository root first on sys.path so that tests import this checkout's package.


def pytest_configure(config):
    """Register the project's pytest markers."""
    config.addinivalue_line(
        "markers", "mmaction2: holds stmixer to reference fixtures made by running mmaction2's own code "
                   "(tests/reference/mmaction2)")
    config.addinivalue_line(
        "markers", "tuber: holds stmixer to reference fixtures made by running the official TubeR code "
                   "(tests/reference/tuber)")
    config.addinivalue_line(
        "markers", "evad: holds stmixer to reference fixtures made by running the official EVAD code "
                   "(tests/reference/evad)")
    config.addinivalue_line(
        "markers", "stabn: holds stmixer to reference fixtures made by running the official ST-ABN code "
                   "(tests/reference/stabn)")
