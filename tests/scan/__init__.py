"""Tests for zigma.scan (a package so test module names cannot clash with other suites)."""
