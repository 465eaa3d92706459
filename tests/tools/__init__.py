"""Tests of the offline tools (webhook/tools/)."""
