"""Tests of stain separation and the membrane quantifier (a package, so that test module names may
repeat those in tests/cli)."""
