"""The store conformance suite: every backend of ``stepstone._store`` passes these tests."""
