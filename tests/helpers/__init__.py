"""Test helpers (imported as `tests.helpers.*`; the product never imports them)."""
