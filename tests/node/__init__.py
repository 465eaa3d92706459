"""Tests of what runs on a node or in a pod's network namespace (webhook/node/)."""
