"""The test suite (a package, so that `tests.*` resolves here and not to a site-packages `tests`)."""
