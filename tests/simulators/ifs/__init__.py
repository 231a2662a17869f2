"""Tests of the IFS Cloud simulator."""
