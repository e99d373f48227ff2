"""Test doubles shared by the test tiers (documented fakes, never shipped in a package)."""
