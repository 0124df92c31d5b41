"""The store conformance suite: every backend of ``stepstone.store`` passes these tests."""
