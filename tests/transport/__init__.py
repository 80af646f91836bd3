"""Tests for zigma.transport (a package so test module names cannot clash with other suites)."""
