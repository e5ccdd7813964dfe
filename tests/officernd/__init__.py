"""Tests of the OfficeRnD integration, against a fake OfficeRnD built from its documented API."""
