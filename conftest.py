# Puts the repository root first on sys.path so that tests import this checkout's package.
