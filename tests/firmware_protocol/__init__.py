"""Tests for the door board protocol library."""
